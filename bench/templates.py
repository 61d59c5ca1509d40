"""Rendering cost of channel templates (`clarion.templates.render_template`), as the API pays it at
accept and a bulk job pays it per row (ADR 0007).

Three templates, each rendered N times with a different order number per call, in one process:

- telegram-html: an HTML text with two variables (one default) and a URL button (`| urlencode`);
- telegram-markdown: the same in MarkdownV2 (every printed value escaped);
- email: subject, text and html with one variable.

Each call does what the API does: look the template up in the channel record, the compiled-template
cache, defaults and required variables, render every field, validate the result as `Content`. The
first call compiles; the rest hit the cache. Reported: renders per second and microseconds each.

    .venv/bin/python bench/templates.py [--renders 100000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from clarion.db.channels import ChannelRecord, StoredTemplate
from clarion.models.channel import ChannelTemplate
from clarion.templates import render_template, template_problem

BUTTON = [[{"text": "Track {{ orderId }}", "url": "https://shop.example/o/{{ orderId | urlencode }}"}]]
VARIABLES = [{"name": "orderId"}, {"name": "customer", "default": "there"}]
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "telegram-html": ("telegram", {"language": "en", "parseMode": "HTML", "buttons": BUTTON,
                                   "text": "<b>Hi</b> {{ customer }}, order {{ orderId }} shipped"}),
    "telegram-markdown": ("telegram", {"language": "en", "parseMode": "MarkdownV2", "buttons": BUTTON,
                                       "text": "*Hi* {{ customer }}, order {{ orderId }} shipped"}),
    "email": ("email", {"language": "en", "subject": "Order {{ orderId }}",
                        "text": "Order {{ orderId }} shipped",
                        "html": "<p>Order <b>{{ orderId }}</b> shipped</p>"}),
}


def _channel(type_: str, variant: dict[str, Any]) -> ChannelRecord:
    template = ChannelTemplate.model_validate({"name": "bench", "variables": VARIABLES,
                                               "variants": [variant]})
    return ChannelRecord(id=1, key="bench.bench", type=type_, bot_id=None, bot_username=None,
                         api_base_url=None, webhook_secret_sha256=None, ready=True,
                         templates={"bench": StoredTemplate.of(template, template_problem(template))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{'template':<20} {'renders/s':>10} {'µs each':>8}")
    for name, (type_, variant) in CASES.items():
        channel = _channel(type_, variant)
        started = time.perf_counter()
        for i in range(args.renders):
            render_template(channel, "bench", "en", {"orderId": f"A-{i}.{i % 7}", "customer": "Ann"})
        elapsed = time.perf_counter() - started
        print(f"{name:<20} {args.renders / elapsed:>10,.0f} {elapsed / args.renders * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
