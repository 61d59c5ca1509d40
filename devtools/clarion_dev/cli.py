"""`clarion`: developer commands. Each subcommand hands the rest of the arguments to its module.

    clarion dev up|down            the whole system locally (clarion_dev.localrun)
    clarion dev cluster ...        the local control plane (clarion_dev.cluster.cli)
    clarion dev podrunner ...      run Pods of the local control plane as processes (clarion_dev.podrunner)
    clarion dev telegram ...       the Telegram Bot API emulator (clarion_dev.telegram.cli)
    clarion dev smtp ...           the SMTP sink (clarion_dev.smtp_sink)
    clarion crds ...               render crds/ from the models (clarion_dev.crdgen)
    clarion campaign ...           campaign tasks such as retry-failed (clarion_dev.campaign_cli)
    clarion dlq list|replay ...    notification dead letters (clarion_dev.dlq_cli)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

_COMMANDS: dict[tuple[str, ...], str] = {
    ("dev", "up"): "clarion_dev.localrun:up",
    ("dev", "down"): "clarion_dev.localrun:down",
    ("dev", "cluster"): "clarion_dev.cluster.cli:main",
    ("dev", "podrunner"): "clarion_dev.podrunner:main",
    ("dev", "telegram"): "clarion_dev.telegram.cli:main",
    ("dev", "smtp"): "clarion_dev.smtp_sink:main",
    ("crds",): "clarion_dev.crdgen:main",
    ("campaign",): "clarion_dev.campaign_cli:main",
    ("dlq",): "clarion_dev.dlq_cli:main",
}


def _resolve(target: str) -> Callable[[list[str]], int | None]:
    module, _, func = target.partition(":")
    entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module), func)
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for words, target in sorted(_COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(args[: len(words)]) == words:
            return int(_resolve(target)(args[len(words):]) or 0)
    print(__doc__, file=sys.stderr)
    return 0 if args[:1] in (["-h"], ["--help"], []) else 2


if __name__ == "__main__":
    raise SystemExit(main())
