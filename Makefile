# Pack Operator. `make run` runs it on a local control plane; `make test` runs the whole suite.
.PHONY: run test tools cluster cluster-down crds manifests build fmt lint bench bench-pack bench-reflector bench-peers bench-idle fuzz package

run: ## control plane + CRDs + all three controllers + samples
	hack/run.sh

test: ## everything CI runs: fmt, clippy, CRD drift, unit and end-to-end tests
	hack/test.sh

tools: ## build (once) the pinned kube-apiserver, kube-controller-manager, kubectl, etcd, helm
	hack/tools.sh

cluster: tools ## start (or reuse) the local control plane; kubeconfig in .cluster/kubeconfig
	cargo build -q -p e2e --bin testcluster
	target/debug/testcluster up --dir .cluster

cluster-down: ## stop the local control plane
	@if [ -x target/debug/testcluster ]; then target/debug/testcluster down --dir .cluster; fi

bench: tools ## benchmarks (figures, not tests): BENCH_ARGS="--deployments 100" to shrink
	cargo build --release -p redeploy-controller -p bench
	target/release/redeploy-bench $(BENCH_ARGS)

bench-pack: tools ## pack-controller benchmark: BENCH_ARGS="--packs 20 --steady-seconds 60" to shrink
	cargo build --release -p pack-controller -p bench
	target/release/pack-bench $(BENCH_ARGS)

bench-peers: tools ## side by side with Stakater Reloader and Flux (peers from hack/peers.sh): BENCH_ARGS="--only pack --packs 20 --rounds 1" to shrink
	hack/peers.sh >/dev/null
	cargo build --release -p redeploy-controller -p pack-controller -p bench
	target/release/peers-bench $(BENCH_ARGS)

bench-reflector: tools ## reflector-controller benchmark: BENCH_ARGS="--namespaces 100" to shrink
	cargo build --release -p reflector-controller -p bench
	target/release/reflector-bench $(BENCH_ARGS)

bench-idle: tools ## idle memory of the three controllers (release builds), split anonymous / file-backed
	cargo build --release -p pack-controller -p reflector-controller -p redeploy-controller -p bench
	target/release/idle-bench $(BENCH_ARGS)

fuzz: ## fuzz the parsers (needs `cargo install cargo-fuzz` and a nightly toolchain); FUZZ_SECONDS=60
	cd fuzz && for t in watch_to_redeploy version_constraint helm_index; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; done

crds: ## regenerate deploy/crds from the Rust types (and the chart's copies and deploy/manifests)
	cargo run -q -p common --bin crdgen
	hack/manifests.sh

manifests: ## copy deploy/crds and deploy/admission into the chart, render deploy/manifests with the pinned helm
	hack/manifests.sh

package: ## chart archive + index.yaml in PACKAGE_DIR (default dist/charts); OCI_REGISTRY=oci://host/path also helm-pushes it
	hack/package.sh

build:
	cargo build --workspace

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
