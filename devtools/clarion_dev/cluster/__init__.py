"""A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) without Docker."""

from clarion_dev.cluster.launcher import (
    BinariesUnavailable,
    ControlPlane,
    ControlPlaneError,
    find_binaries,
)

__all__ = ["BinariesUnavailable", "ControlPlane", "ControlPlaneError", "find_binaries"]
