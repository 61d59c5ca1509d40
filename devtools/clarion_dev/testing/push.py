"""pytest plugin: the `push_service` fixture, a started push-service stand-in (`clarion_dev.push_service`).

    @pytest.mark.push_service(unknown_status=404)     # default: 410 for endpoints it does not know
    async def test_x(push_service): browser = push_service.subscribe() ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clarion_dev.push_service import PushService
from clarion_dev.testing.markers import marker_kwargs


@pytest.fixture
async def push_service(request: pytest.FixtureRequest) -> AsyncIterator[PushService]:
    """A started stand-in on a free loopback port; `@pytest.mark.push_service(...)` passes its arguments."""
    service = PushService(**marker_kwargs(request, "push_service"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
