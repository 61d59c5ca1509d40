#!/usr/bin/env bash
# Everything a fresh Debian machine needs before `make test` or `make up`, idempotent:
# Debian packages (PostgreSQL 15, Redis 7, Chromium, and as root the real node's containerd, runc, CNI
# plugins, buildah, mmdebstrap), a virtualenv with Clarion and its dev tools, the Kubernetes binaries
# built from Go modules, and (as root) the node's images built from Debian packages (both cached
# outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >&2
  fi
  "$PY" -m venv .venv
fi
stamp=.venv/.clarion-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  # setuptools too: the copy a Python 3.11 venv is born with (65.5) has published advisories.
  .venv/bin/python -m pip install -q --upgrade pip setuptools
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

bash scripts/local-services.sh start >/dev/null

# Debian's Chromium for the Mini App's browser tests (Playwright drives it; it downloads no browser).
if ! command -v chromium >/dev/null; then
  echo "bootstrap: installing chromium from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi

# The real node (docs/control-plane.md): containerd, runc and the CNI plugins to run pods, iptables and
# conntrack for kube-proxy's Services, mmdebstrap and buildah to build the images without Docker, and
# libc6-dev for the static pause binary. It runs containers, so only root installs and uses it.
node_packages=(containerd runc containernetworking-plugins iptables conntrack mmdebstrap buildah libc6-dev)
if [[ $(id -u) -eq 0 ]]; then
  missing=()
  for package in "${node_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "bootstrap: installing ${missing[*]} from Debian packages (the real node)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
elif [[ "${CI:-}" == "true" ]]; then
  echo "bootstrap: CI runs the node tier, which needs root" >&2
  exit 1
fi

build_binaries_and_images() {
  bash scripts/build-k8s.sh >/dev/null
  # The node's images: Clarion's own, Postgres, Redis and pause (each cached by content hash).
  if [[ $(id -u) -eq 0 ]]; then
    bash scripts/build-image.sh >/dev/null
  fi
}

if [[ "${CLARION_SKIP_K8S_BUILD:-}" != "1" ]]; then
  if command -v go >/dev/null; then
    if [[ "${CLARION_BUILD_IN_BACKGROUND:-}" == "1" ]]; then
      # `make test`: a cold build (about 8 minutes of Go) runs beside the unit and integration tiers,
      # niced so that their tests keep the CPU they need. The tests that need the binaries or the
      # images run last (tests/conftest.py orders the tiers) and call the same scripts, which wait on
      # the build's lock and then find the cache. A build that failed here fails again there, loudly.
      build_log="${XDG_CACHE_HOME:-$HOME/.cache}/clarion/background-build.log"
      mkdir -p "$(dirname "$build_log")"
      # Appended: a second caller (CI's `make audit`, then `make test`) waits on the first's lock.
      echo "--- $(date -u +%FT%TZ) bootstrap: background build" >>"$build_log"
      (renice -n 10 -p "$BASHPID" >/dev/null; build_binaries_and_images) </dev/null >>"$build_log" 2>&1 &
      echo "bootstrap: building the Kubernetes binaries and the node's images in the background" \
           "when not cached (log: $build_log)" >&2
    else
      build_binaries_and_images
    fi
  elif [[ "${CI:-}" == "true" ]]; then
    echo "bootstrap: Go is required in CI to build the local Kubernetes control plane" >&2
    exit 1
  else
    echo "bootstrap: Go not found; the cluster and e2e tiers will be skipped on this machine" >&2
  fi
fi
