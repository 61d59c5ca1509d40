"""`clarion-operator`: the kopf operator for NotificationChannel, BroadcastCampaign, ManagedGroup and
NotificationRoute."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import kopf
from clarion.logging import configure_logging

from clarion_operator.settings import OperatorSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion-operator",
        description="Reconciles Clarion's custom resources: NotificationChannel, BroadcastCampaign and "
                    "ManagedGroup. Settings come from CLARION_* environment variables (database, Redis, "
                    "image, ...); the Kubernetes API from the in-cluster service account or KUBECONFIG.",
    )
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="namespace to watch (repeatable); default: CLARION_NAMESPACES, else all")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = OperatorSettings()
    configure_logging(settings.log_level, settings.log_format)
    import clarion_operator.channels
    import clarion_operator.indexes
    import clarion_operator.scaler
    import clarion_operator.startup  # noqa: F401  (handlers register on import)
    from clarion_operator import api_keys, campaigns, group_schedule, groups, routes  # noqa: F401  (api_keys after startup: it uses its pools)

    campaigns.register(settings)
    groups.register(settings)
    group_schedule.register(settings)
    routes.register(settings)

    namespaces = list(args.namespace) or settings.namespace_list
    asyncio.run(kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=args.liveness or settings.liveness_endpoint,
        memo=kopf.Memo(settings=settings, namespaces=namespaces),
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
