"""`clarion dev telegram`: run the emulator as a process until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal

from clarion.logging import configure_logging, get_logger

from clarion_dev.telegram.faults import LatencyModel
from clarion_dev.telegram.limits import RateLimits
from clarion_dev.telegram.server import Emulator, quiet_gc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion dev telegram",
                                     description="Telegram Bot API emulator (docs/emulator.md)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--limits", choices=["real", "scaled", "off"], default="real")
    parser.add_argument("--scale", type=float, default=1.0, help="rate multiplier with --limits scaled")
    defaults = RateLimits()
    for name in ("global", "paid", "private", "group"):
        parser.add_argument(f"--{name}-burst", type=float, default=getattr(defaults, f"{name}_burst"),
                            help=f"messages banked by the {name} budget")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="round-trip latency of every call")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--bot", action="append", default=[], metavar="TOKEN[:username]",
                        help="register a bot (repeatable)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="event loop (uvloop, installed with uvicorn[standard], is faster)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _bot_spec(spec: str) -> tuple[str, str | None]:
    """'123:secret' or '123:secret:name' -> (token, username)."""
    head, _, rest = spec.partition(":")
    secret, _, username = rest.partition(":")
    return f"{head}:{secret}", username or None


async def _run(args: argparse.Namespace) -> None:
    log = get_logger("clarion_dev.telegram")
    latency = LatencyModel(args.latency_ms / 1000, args.jitter_ms / 1000) if args.latency_ms else None
    bursts = RateLimits(global_burst=args.global_burst, paid_burst=args.paid_burst,
                        private_burst=args.private_burst, group_burst=args.group_burst)
    emu = Emulator(args.limits, args.scale, latency, rate_limits=bursts)
    for spec in args.bot:
        token, username = _bot_spec(spec)
        emu.add_bot(token, username)
    await emu.start(args.host, args.port)
    quiet_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("telegram emulator listening", url=emu.base_url, limits=args.limits, scale=emu.scale,
             latency_ms=args.latency_ms, bots=len(args.bot))
    try:
        await stop.wait()
    finally:
        await emu.stop()
        log.info("telegram emulator stopped")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_run(args))
        else:
            asyncio.run(_run(args))
    except ValueError as exc:
        get_logger("clarion_dev.telegram").error("bad argument", error=str(exc))
        return 2
    return 0
