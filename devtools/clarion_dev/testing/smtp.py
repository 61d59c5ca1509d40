"""pytest plugin: the `smtp_sink` fixture.

    @pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"app": "secret"})
    async def test_x(smtp_sink): ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.testing.markers import marker_kwargs


@pytest.fixture
async def smtp_sink(request: pytest.FixtureRequest) -> AsyncIterator[SmtpSink]:
    """A started SMTP sink on a free port; `@pytest.mark.smtp_sink(...)` passes SmtpSink arguments."""
    sink = SmtpSink(**marker_kwargs(request, "smtp_sink"))
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
