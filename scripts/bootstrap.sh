#!/usr/bin/env bash
# Everything a fresh Debian machine needs before `make test` or `make up`, idempotent:
# Debian packages (PostgreSQL 15, Redis 7, Chromium), a virtualenv with Clarion and its dev tools,
# and the Kubernetes control-plane binaries built from Go modules (cached outside the repo).
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

if [[ "${CLARION_SKIP_K8S_BUILD:-}" != "1" ]]; then
  if command -v go >/dev/null; then
    bash scripts/build-k8s.sh >/dev/null
  elif [[ "${CI:-}" == "true" ]]; then
    echo "bootstrap: Go is required in CI to build the local Kubernetes control plane" >&2
    exit 1
  else
    echo "bootstrap: Go not found; the cluster and e2e tiers will be skipped on this machine" >&2
  fi
fi
