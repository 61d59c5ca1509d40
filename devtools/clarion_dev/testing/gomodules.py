"""Files of other projects' Go modules, for installing their CRDs into the local control plane.

Projects such as prometheus-operator and KEDA ship their CRD YAML inside their Go module; `go mod download`
fetches a pinned version once into the Go module cache (checked against the checksum database), so
tests validate against the real CRDs without copying them into this repository.

    go_module_dir(module, version) -> Path      the module's unpacked source in the module cache
    PROMETHEUS_OPERATOR                         the pinned module of the monitoring.coreos.com CRDs
    monitoring_crds() -> list[Path]             its PodMonitor, ServiceMonitor and PrometheusRule CRDs
    KEDA                                        the pinned module of the keda.sh CRDs and scalers
    keda_crds() -> list[Path]                   its ScaledObject and TriggerAuthentication CRDs
    keda_scaler_source(name) -> Path            a scaler's Go source (its `keda:"name=..."` metadata tags)
    keda_struct_parameters(source, struct)      the parameter names of one metadata struct, by source
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
MONITORING_KINDS = ("podmonitors", "servicemonitors", "prometheusrules")
# v2.20.2: later versions need a newer Go than the one installed.
KEDA = ("github.com/kedacore/keda/v2", "v2.20.2")
KEDA_KINDS = ("scaledobjects", "triggerauthentications")


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


def keda_crds() -> list[Path]:
    """KEDA's CRDs of the objects the operator creates for `engine: keda` (keda.sh/v1alpha1)."""
    crds = go_module_dir(*KEDA) / "config" / "crd" / "bases"
    return [crds / f"keda.sh_{kind}.yaml" for kind in KEDA_KINDS]


def keda_scaler_source(name: str) -> Path:
    """The Go source of one of KEDA's scalers, e.g. `redis_streams_scaler.go`."""
    return go_module_dir(*KEDA) / "pkg" / "scalers" / name


_KEDA_TAG = re.compile(r'`keda:"([^"]*)"`')


def keda_struct_parameters(source: Path, struct: str) -> dict[str, set[str]]:
    """The parameters a KEDA scaler's metadata struct reads, by where it reads them from
    (`triggerMetadata`, `authParams`, `resolvedEnv`): its fields' `keda:"name=a;b, order=x;y"` tags."""
    text = source.read_text()
    start = text.find(f"type {struct} struct {{")
    if start < 0:
        raise LookupError(f"{source} defines no struct {struct}")
    body = text[start:text.index("\n}", start)]
    found: dict[str, set[str]] = {}
    for tag in _KEDA_TAG.findall(body):
        options = dict(part.strip().partition("=")[::2] for part in tag.split(","))
        names = [n for n in options.get("name", "").split(";") if n]
        for order in options.get("order", "").split(";"):
            if order and names:
                found.setdefault(order, set()).update(names)
    return found
