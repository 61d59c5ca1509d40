"""`clarion-webhook`: the Telegram webhook ingress for every channel, on uvicorn."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence

import uvicorn
from clarion.logging import configure_logging, get_logger

from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clarion-webhook",
        description="Receive Telegram updates at POST /tg/webhook/{namespace.name}, dedup them and append "
                    "them to Redis streams. Other settings come from CLARION_* environment variables.",
    )
    parser.add_argument("--host", help="address to listen on (env CLARION_WEBHOOK_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (env CLARION_WEBHOOK_PORT, default 8080)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("webhook_host", args.host), ("webhook_port", args.port)) if v is not None}
    settings = WebhookSettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    get_logger("clarion.webhook").info("starting", host=settings.webhook_host, port=settings.webhook_port,
                                       partitions=settings.update_partitions)
    app = create_app(settings)
    # What exists now lives as long as the process: keep it out of the collector's full passes (tens of
    # milliseconds each, a latency spike for every request in flight).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=settings.webhook_host, port=settings.webhook_port,
                loop="auto", http="auto", access_log=False, log_config=None, server_header=False,
                proxy_headers=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
