"""pytest plugin: the `telegram_emulator` fixture and an aiogram `Bot` factory pointed at it.

    @pytest.mark.emulator(limits="real")        # default: limits="scaled", scale=10
    async def test_x(telegram_emulator): ...
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from clarion_dev.telegram import Emulator
from clarion_dev.testing.markers import marker_kwargs

DEFAULT_SCALE = 10.0


def aiogram_bot(emulator: Emulator, token: str, timeout: float = 10.0) -> Bot:
    """An unchanged aiogram Bot talking to the emulator through aiogram's custom API server setting."""
    api = TelegramAPIServer.from_base(emulator.base_url)
    return Bot(token, session=AiohttpSession(api=api, timeout=timeout))


@pytest.fixture
async def telegram_emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """A started emulator on a free port; `@pytest.mark.emulator(...)` passes Emulator arguments.

    While it runs, automatic full garbage collections are off in the test process (restored after):
    a full pass over a big test process stalls the event loop long enough for queued requests to
    reach the limiter together and draw 429s Telegram would not send.
    """
    kwargs: dict[str, Any] = {"limits": "scaled", "scale": DEFAULT_SCALE,
                              **marker_kwargs(request, "emulator")}
    emulator = Emulator(**kwargs)
    await emulator.start()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 1_000_000_000)
    try:
        yield emulator
    finally:
        gc.set_threshold(*thresholds)
        await emulator.stop()
