"""Fixtures of the e2e tier: the `clarion-operator` process and campaign helpers.

Everything is real: the control plane, Postgres, Redis, the Telegram emulator (in this process), the
operator (a subprocess watching the test's namespace) and the pod runner, which runs the sender Job's
pods as local `clarion-sender` processes. The helpers themselves are in clarion_dev.testing.campaigns
(the node tier uses them too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clarion_dev.testing.campaigns import Campaigns
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator


@pytest.fixture
def campaigns(k8s: KubeApis, kube_namespace: str, operator: Operator, tmp_path: Path) -> Campaigns:
    return Campaigns(k8s, kube_namespace, operator, tmp_path / "pod-logs")
