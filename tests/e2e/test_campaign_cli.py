"""`clarion campaign retry-failed` against a real API server: bad input gets a clear error."""

from __future__ import annotations

import pytest
from clarion_dev import campaign_cli
from clarion_dev.cluster import ControlPlane

pytestmark = pytest.mark.e2e


def test_retry_failed_of_a_campaign_that_does_not_exist_fails_with_its_name(
    control_plane: ControlPlane, kube_namespace: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = campaign_cli.main(["retry-failed", "ghost", "-n", kube_namespace,
                              "--kubeconfig", str(control_plane.kubeconfig)])

    assert code == 1
    assert f"broadcastcampaign {kube_namespace}/ghost: not found" in capsys.readouterr().err
