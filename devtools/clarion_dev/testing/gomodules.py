"""Files of other projects' Go modules, for installing their CRDs into the local control plane.

Projects such as prometheus-operator ship their CRD YAML inside their Go module; `go mod download`
fetches a pinned version once into the Go module cache (checked against the checksum database), so
tests validate against the real CRDs without copying them into this repository.

    go_module_dir(module, version) -> Path      the module's unpacked source in the module cache
    PROMETHEUS_OPERATOR                         the pinned module of the monitoring.coreos.com CRDs
    monitoring_crds() -> list[Path]             its PodMonitor, ServiceMonitor and PrometheusRule CRDs
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
MONITORING_KINDS = ("podmonitors", "servicemonitors", "prometheusrules")


class GoModuleUnavailable(RuntimeError):
    """Go is missing or `go mod download` failed."""


def go_module_dir(module: str, version: str) -> Path:
    """The unpacked source of `module@version`, downloaded into the Go module cache on first use."""
    go = shutil.which("go")
    if go is None:
        raise GoModuleUnavailable(f"Go is not installed, so {module}@{version} cannot be downloaded")
    # Outside any go.mod, with the installed toolchain: nothing but the download happens.
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], cwd=empty,
                                capture_output=True, text=True, timeout=600, check=False,
                                env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"})
    if result.returncode != 0:
        raise GoModuleUnavailable(f"go mod download {module}@{version} failed: "
                                  f"{(result.stdout + result.stderr).strip()[-2000:]}")
    return Path(json.loads(result.stdout)["Dir"])


def monitoring_crds() -> list[Path]:
    """prometheus-operator's CRDs of the objects the chart renders (monitoring.coreos.com/v1)."""
    crds = go_module_dir(*PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd"
    return [crds / f"monitoring.coreos.com_{kind}.yaml" for kind in MONITORING_KINDS]
