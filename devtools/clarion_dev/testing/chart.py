"""The Helm chart on the local control plane: render it, apply its RBAC, act as its ServiceAccounts.

    operator_kubeconfig(control_plane, namespace) -> Path
        applies the chart's operator ServiceAccount, ClusterRole(s) and bindings for a release in
        `namespace` and writes a kubeconfig that authenticates with that ServiceAccount's token, so the
        operator (or a test) runs with exactly the chart's permissions instead of admin credentials.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from clarion_dev import render_manifests
from clarion_dev.cluster.launcher import ControlPlane

CHART_DIR = render_manifests.CHART_DIR
RBAC_TEMPLATES = (
    "templates/serviceaccount-operator.yaml",
    "templates/clusterrole-operator.yaml",
    "templates/clusterrolebinding-operator.yaml",
    "templates/role-operator.yaml",
    "templates/rolebinding-operator.yaml",
)
TOKEN_SECONDS = 6 * 3600


class ChartError(RuntimeError):
    """helm is missing or failed."""


def helm_binary(control_plane: ControlPlane) -> Path:
    """helm from the control plane's binary directory, else wherever render_manifests finds one."""
    candidate = control_plane.bin_dir / "helm"
    if candidate.exists():
        return candidate
    found = render_manifests.find_helm()
    if found is None:
        raise ChartError("helm is not built (bash scripts/build-k8s.sh)")
    return found


def release_name(namespace: str) -> str:
    """A short release name unique per namespace, so cluster-scoped RBAC of different tests never collides."""
    return f"clarion-{hashlib.sha256(namespace.encode()).hexdigest()[:8]}"


def render(control_plane: ControlPlane, namespace: str, *args: str, release: str | None = None) -> str:
    """`helm template` of the chart as a release in `namespace`, with extra helm arguments."""
    return render_manifests.helm_template(helm_binary(control_plane), CHART_DIR, *args,
                                          release=release or release_name(namespace), namespace=namespace)


def operator_service_account(namespace: str, release: str | None = None) -> str:
    """Name of the operator's ServiceAccount for the chart's default values."""
    return f"{release or release_name(namespace)}-operator"


def apply_operator_rbac(control_plane: ControlPlane, namespace: str, set_values: Sequence[str] = (),
                        release: str | None = None) -> list[dict[str, object]]:
    """Render only the chart's operator RBAC and ServiceAccount, apply them; return the objects."""
    # One template at a time: --show-only fails on a template that renders nothing (the Roles when
    # watchNamespaces is empty), so those are skipped.
    docs: list[dict[str, object]] = []
    for template in RBAC_TEMPLATES:
        try:
            text = render(control_plane, namespace, "--show-only", template,
                          *[a for v in set_values for a in ("--set", v)], release=release)
        except render_manifests.RenderError as exc:
            if "could not find template" in str(exc):
                continue
            raise
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    control_plane.kubectl("apply", "-f", "-", input_text=manifest)
    return docs


def service_account_token(control_plane: ControlPlane, namespace: str, name: str,
                          seconds: int = TOKEN_SECONDS) -> str:
    """A bound token for ServiceAccount `namespace/name` from the TokenRequest API."""
    out = control_plane.kubectl("create", "token", name, "-n", namespace, f"--duration={seconds}s")
    return out.stdout.strip()


def token_kubeconfig(control_plane: ControlPlane, path: Path, token: str, user: str,
                     namespace: str = "default") -> Path:
    """Write a kubeconfig for the control plane that authenticates with a bearer token."""
    cluster = "clarion-local"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": control_plane.server,
            "certificate-authority-data": base64.b64encode(control_plane.ca_cert.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster,
                      "context": {"cluster": cluster, "user": user, "namespace": namespace}}],
        "current-context": cluster,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


def operator_kubeconfig(control_plane: ControlPlane, namespace: str, set_values: Sequence[str] = ()) -> Path:
    """Apply the chart's operator RBAC for a release in `namespace` and return a kubeconfig using its token.

    `set_values` are `helm --set` strings, e.g. ("operator.watchNamespaces={team-a}",).
    """
    apply_operator_rbac(control_plane, namespace, set_values)
    account = operator_service_account(namespace)
    token = service_account_token(control_plane, namespace, account)
    path = control_plane.workdir / f"operator-{namespace}.kubeconfig"
    user = f"system:serviceaccount:{namespace}:{account}"
    return token_kubeconfig(control_plane, path, token, user, namespace)


class Helm:
    """helm with a kubeconfig and private config/cache/data directories."""

    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = {**os.environ,
                    "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
        return proc
