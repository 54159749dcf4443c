.PHONY: run test lint bench sync down status containers containers-down k8s
SHELL := /bin/bash
UV = $(shell bash scripts/ensure-uv.sh)

## Run the whole platform locally with the simulator (Ctrl-C stops it).
run: sync
	bash scripts/ensure-services.sh
	$(UV) run --no-sync iotctl up

## Install everything the tests need, then lint, type-check and run every package's tests.
test:
	bash scripts/test.sh

sync:
	$(UV) sync --all-packages --frozen --compile-bytecode
	$(UV) run --no-sync python -m compileall -q $$(ls -d */src) >/dev/null

lint: sync
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy $$(ls -d */src)

## Run every benchmark in benchmarks/ and write results under benchmarks/results/.
bench: sync
	bash scripts/ensure-services.sh
	$(UV) run --no-sync benchmarks all

status:
	$(UV) run --no-sync iotctl status

down:
	$(UV) run --no-sync iotctl down

## Build every image (base images from Debian's packages, no image registry) and run the stack in
## containers with podman; slow, not part of `make test`. See scripts/containers/run.sh.
containers:
	bash scripts/containers/run.sh

## Remove every container, network, volume and image that `make containers` made.
containers-down:
	bash scripts/containers/teardown.sh

## A server-side dry run of both k8s overlays against a real kube-apiserver + etcd (no kubelet);
## needs KUBE_APISERVER (no registry here ships one). See infra/k8s/README.md.
k8s:
	bash scripts/k8s/dry-run.sh
