"""pytest plugin: the `smtp_sink` fixture.

    @pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"app": "secret"})
    async def test_x(smtp_sink): ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion_dev.smtp_sink import SmtpSink


@pytest.fixture
async def smtp_sink(request: pytest.FixtureRequest) -> AsyncIterator[SmtpSink]:
    """A started SMTP sink on a free port; `@pytest.mark.smtp_sink(...)` passes SmtpSink arguments."""
    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker("smtp_sink")
    if marker is not None:
        kwargs.update(marker.kwargs)
    sink = SmtpSink(**kwargs)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
