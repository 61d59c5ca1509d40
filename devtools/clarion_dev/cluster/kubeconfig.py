"""Self-contained kubeconfig files (certificates inlined) for kubectl, the kubernetes client and kopf."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from clarion_dev.cluster.certs import KeyPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, *, server: str, ca_cert: Path, client: KeyPair, user: str, cluster: str = "clarion-local"
) -> Path:
    """Write a kubeconfig with one cluster, one user and one current context; return its path."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [
            {"name": cluster, "context": {"cluster": cluster, "user": user, "namespace": "default"}}
        ],
        "current-context": cluster,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path
