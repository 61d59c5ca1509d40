"""`clarion campaign ...`: campaign tasks done through the Kubernetes API.

    clarion campaign retry-failed NAME [-n NAMESPACE] [--kubeconfig PATH]

retry-failed bumps spec.retryFailed; once the campaign has finished, the operator puts its failed
deliveries back to pending and starts a new sender run (status.run and status.retryFailedObserved
show it happened).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "clarion.io", "v1alpha1", "broadcastcampaigns"
FINISHED = ("Completed", "PartiallyFailed", "Failed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion campaign", description="BroadcastCampaign tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    retry = sub.add_parser("retry-failed", help="re-send the failed deliveries of a finished campaign")
    retry.add_argument("name", help="BroadcastCampaign name")
    retry.add_argument("-n", "--namespace", default="default")
    retry.add_argument("--kubeconfig", default=None, help="default: KUBECONFIG or ~/.kube/config")
    return parser


def _api(kubeconfig: str | None) -> Any:
    configuration = kubernetes.client.Configuration()
    loaders: Any = kubernetes.config
    loaders.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))


def retry_failed(api: Any, namespace: str, name: str) -> tuple[int, str]:
    """Bump spec.retryFailed by one (compare-and-set on resourceVersion); return the new value and phase."""
    for _ in range(5):
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        value = int(obj["spec"].get("retryFailed") or 0) + 1
        patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                 "spec": {"retryFailed": value}}
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
        except ApiException as exc:
            if exc.status == 409:
                continue
            raise
        return value, str((obj.get("status") or {}).get("phase") or "")
    raise RuntimeError(f"{namespace}/{name} kept changing; try again")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        value, phase = retry_failed(_api(args.kubeconfig), args.namespace, args.name)
    except ApiException as exc:
        reason = "not found" if exc.status == 404 else f"{exc.status} {exc.reason}"
        print(f"error: broadcastcampaign {args.namespace}/{args.name}: {reason}", file=sys.stderr)
        return 1
    print(f"broadcastcampaign {args.namespace}/{args.name}: spec.retryFailed={value}")
    if phase not in FINISHED:
        state = phase or "not started"
        print(f"note: the campaign is {state}; failed deliveries are re-sent when it finishes",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
