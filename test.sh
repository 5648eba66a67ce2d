#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests start as real peers
# (Python with PyJWT, jwcrypto and gRPC; Node with oidc-provider; redis-server, nginx) and the
# tools that check what ships beside the binary (systemd-analyze, groff, Buildah, Podman,
# kubernetes-validate), checks the dependencies against deny.toml (installing cargo-deny if
# needed), runs every test, then checks the release build's container image and the
# Kubernetes manifests. Arguments go to `cargo test` (e.g. `./test.sh --test e2e proxy::`),
# and then only the tests they name run.
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

# System packages the tests start as real peers.
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# Redis for the shared-state tests; each test starts its own on a free port (the system
# service is not used by them).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# systemd-analyze checks the shipped unit file (deploy/systemd).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Buildah builds the container image; Podman runs it (with runc: crun cannot start
# containers under hybrid cgroups); without them the image check runs it in a chroot.
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v podman >/dev/null 2>&1 || missing+=(podman runc)
# nginx serves signed config bundles to gateways in the fleet tests.
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
# groff reads the manual pages `portcullis man` writes.
command -v groff >/dev/null 2>&1 || missing+=(groff-base)
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: needs a Rust toolchain (cargo, Rust >= 1.89) on PATH" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Python peers (gRPC client and server, token minting by an independent implementation).
python3 -m pip install --quiet --disable-pip-version-check -r tests/helpers/requirements.txt 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r tests/helpers/requirements.txt

# The OAuth 2.0 / OpenID Connect server the introspection tests run against (oidc-provider).
(cd tests/helpers && npm ci --no-audit --no-fund --loglevel=error)

# The dependency policy (deny.toml): licenses, banned crates, sources. Needs only crates.io;
# `cargo deny check advisories` (the RustSec database) is not run here.
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny@0.20.2 --locked
fi
cargo deny check --hide-inclusion-graph licenses bans sources

cargo test --workspace "$@"

# With no arguments (the whole suite), also what ships beside the binary, built for release as
# users get it: the container image (built with Buildah from the binary, nothing pulled, and
# run) and the Kubernetes manifests and Helm chart (validated, their config checked by the
# binary).
if [ $# -eq 0 ]; then
  cargo build --release --locked --bin portcullis
  if [ "$(id -u)" = 0 ]; then
    tests/deploy/image_check.sh target/release/portcullis
  else
    echo "test.sh: the container image check needs root (Buildah, mounts); skipped" >&2
  fi
  python3 tests/deploy/k8s_check.py target/release/portcullis
fi
