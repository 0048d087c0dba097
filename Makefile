# stylefarm: `make demo` renders on this machine, `make test` runs every test.
# Both install what is missing (PyTorch's libtorch into .venv) and skip what is there.

SHELL := /bin/bash
TORCH_VERSION := 2.13.0
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stylefarm-torch-$(TORCH_VERSION)
SHARED ?= $(abspath $(CURDIR)/../shared)
STYLEFARM_WEIGHTS ?= $(SHARED)/weights/vgg19-caffe-conv1_1-conv3_4.safetensors
DEMO_OUT ?= demo-out
# The release binaries (where cargo puts them) and the cache `stylefarm` keeps weights in.
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release
WEIGHTS_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stylefarm/weights
WEIGHTS_URL ?=
# Garage, the S3 server the tests run, is built once per version into a cache outside
# the checkout, so fresh clones reuse it (keep in step with testkit's GARAGE_VERSION).
GARAGE_VERSION := 2.5.0
GARAGE_ROOT ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stylefarm/garage-$(GARAGE_VERSION)
GARAGE := $(GARAGE_ROOT)/bin/garage

# torch-sys finds libtorch through the `python` on PATH (LIBTORCH_USE_PYTORCH=1 is set
# in .cargo/config.toml); binaries carry an rpath to it and need nothing exported.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export STYLEFARM_SHARED := $(SHARED)
export STYLEFARM_GARAGE := $(GARAGE)

.PHONY: all venv garage build test deploy-check browser demo demo-run bench-engine bench-quality bench-temporal bench-worker bench-coordinator bench-web fmt lint clean

all: build

# PyPI's torch carries the CUDA libraries GPU workers load: about 4.7 GB installed, with
# the wheels unpacked from a temporary copy. No pip cache, so the peak stays near that.
TORCH_FREE_GB := 8

$(STAMP):
	@command -v python3 >/dev/null || { echo "python3 is needed to install libtorch"; exit 1; }
	@free=$$(df -Pk $(CURDIR) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(TORCH_FREE_GB) ]; then \
	  echo "installing torch==$(TORCH_VERSION) into $(VENV) needs about $(TORCH_FREE_GB) GB free; $(CURDIR) has $$free GB (df -h $(CURDIR))"; \
	  exit 1; \
	fi
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir torch==$(TORCH_VERSION) safetensors numpy
	touch $@

venv: $(STAMP)

$(GARAGE):
	@echo "building Garage $(GARAGE_VERSION) (S3 server for the tests) into $(GARAGE_ROOT); once per version, ~12 min"
	cargo install garage --version $(GARAGE_VERSION) --locked --root $(GARAGE_ROOT)

garage: $(GARAGE)

build: venv
	cargo build --release --workspace --bins

test: venv garage deploy-check browser
	cargo test --release --workspace
	# Benches are built (not run), so a broken one fails here.
	cargo bench --workspace --no-run

# Headless Chromium and its WebDriver (Debian's packages) for the web interface's tests.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver (the web interface's browser tests)"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

# The Kubernetes manifests against Kubernetes' schema (strict: unknown fields fail).
# deploy/tests checks them against the binaries, in `cargo test`.
DEPLOY_STAMP := $(VENV)/.stylefarm-kubernetes-validate-1.37.0
$(DEPLOY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir kubernetes-validate==1.37.0
	touch $@

deploy-check: $(DEPLOY_STAMP)
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.33.0 $(filter-out deploy/kustomization.yaml,$(wildcard deploy/*.yaml))

# The example manifest through `stylefarm run`: an embedded coordinator, a local worker
# and local storage, the same code as a cluster. Outputs, loss plots and the contact
# sheet go to $(DEMO_OUT); a second run reuses what is done. The images are in
# examples/images. Weights, in this order: STYLEFARM_WEIGHTS when set; the real partial
# VGG19 in ../shared when it is there; the newest file in the weights cache; else
# torchvision's VGG19 is downloaded into the cache once (`stylefarm weights fetch vgg19`,
# 548 MB; WEIGHTS_URL names a mirror), and without a network the demo stops at once
# saying how to supply a file.
demo: build
	@$(MAKE) --no-print-directory demo-run

demo-run:
	@if [ "$(origin STYLEFARM_WEIGHTS)" != file ] || [ -f "$(STYLEFARM_WEIGHTS)" ]; then \
	  weights="--weights $(STYLEFARM_WEIGHTS)"; \
	elif ls "$(WEIGHTS_CACHE)"/*.safetensors >/dev/null 2>&1; then \
	  weights=""; \
	else \
	  echo "no VGG weights in $(SHARED)/weights or $(WEIGHTS_CACHE): downloading torchvision's VGG19 once (548 MB)"; \
	  $(BIN)/stylefarm weights fetch vgg19 $(if $(WEIGHTS_URL),--url $(WEIGHTS_URL)) >/dev/null \
	    || { echo "make demo: no weights; set STYLEFARM_WEIGHTS=FILE (a VGG safetensors file) and run it again"; exit 1; }; \
	  weights=""; \
	fi; \
	$(BIN)/stylefarm run examples/demo.yaml --out $(DEMO_OUT) $$weights

# Benches name --workspace so they resolve the features `make test` does and reuse its
# build (a `-p` selection resolves its own and rebuilds).
bench-engine: venv
	cargo bench --workspace --bench engine

# Time to quality (coarse-to-fine against single-scale L-BFGS, tubingen x starry night at
# 512 px) and the calibration table (every fixture photo x painting at the defaults), on
# the real partial VGG19; images in target/bench-quality/. STYLEFARM_BENCH_DEVICE=cuda
# on a GPU. See worker/benches/quality.rs for the knobs.
bench-quality: venv
	cargo bench --workspace --bench quality

# Temporal coherence on a synthetic 24-frame pan and zoom over a fixture photo (true flow
# known): the flow's end-point error, and the warp error and style loss of the shot
# styled frame by frame vs with the temporal term; an animated GIF of both in
# target/bench-temporal/. See worker/benches/temporal.rs for the knobs.
bench-temporal: venv
	cargo bench --workspace --bench temporal

# Worker idle time between jobs, prefetch off vs on (real coordinator, Garage, worker).
bench-worker: venv garage
	cargo build --release --workspace --bins
	cargo bench --workspace --bench idle

# The web interface's pages and live stream for a batch of 10,000 jobs against one of 100
# (real coordinator process, the interface's router in process); needs no libtorch.
bench-web:
	cargo build --release --workspace --bins
	cargo bench --workspace --bench pages

# Simulated workers against a real coordinator process; needs no libtorch.
bench-coordinator:
	cargo bench --workspace --bench leases

fmt:
	cargo fmt --all

lint: venv
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf $(DEMO_OUT)
