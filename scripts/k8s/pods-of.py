"""Read rendered manifests on stdin; write one Pod per workload's pod template to stdout.

Pod Security admission enforces on Pods, not on the Deployments, StatefulSets and Jobs that
make them: a server-side dry run of the workloads alone passes even when every pod they would
create is refused. These bare Pods (named `<kind>-<name>`, in the workload's namespace) are
what the controllers would submit.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        kind = doc.get("kind")
        if kind in WORKLOADS:
            template = doc["spec"]["template"]
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        meta = doc["metadata"]
        pod_meta = dict(template.get("metadata", {}))
        pod_meta["name"] = f"{kind.lower()}-{meta['name']}"
        if "namespace" in meta:
            pod_meta["namespace"] = meta["namespace"]
        spec = dict(template["spec"])
        # The StatefulSet controller gives each pod a volume per claim template (its PVC).
        claims = doc["spec"].get("volumeClaimTemplates", []) if kind == "StatefulSet" else []
        if claims:
            spec["volumes"] = [
                *spec.get("volumes", []),
                *(
                    {
                        "name": c["metadata"]["name"],
                        "persistentVolumeClaim": {
                            "claimName": f"{c['metadata']['name']}-{meta['name']}-0"
                        },
                    }
                    for c in claims
                ),
            ]
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec})
    return out


if __name__ == "__main__":
    yaml.safe_dump_all(pods([d for d in yaml.safe_load_all(sys.stdin) if d]), sys.stdout)
