"""Schema fuzzing of the public API: schemathesis, run as CI would run it (`schemathesis run`), against
the OpenAPI document a real `clarion-webhook` process serves, with real Postgres and Redis behind it.

Every operation is called with generated requests, valid and invalid, with the API key and without
it; a 5xx, a status code the document does not declare, or a body, content type or header that breaks
the document fails the run. The run's own report is the failure message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret
from clarion_dev.net import free_port
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.integration

KEY = "f" * 40
BIN = Path(sys.executable).parent
#: What the run checks on every response (schemathesis 4 names). `positive_data_acceptance` is left out:
#: a request the schema allows may still be refused for what a schema cannot say (a channel that does not
#: exist, a recipient that does not fit the channel's type, a notification of another namespace).
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "missing_required_header,unsupported_method,use_after_free,ensure_resource_availability,ignored_auth")
#: A body over the size limit is refused with 413, which the document declares.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""
#: Generated requests per operation and phase: the whole file stays well under two minutes on 2 cores.
#: Without the key every call stops at 401, so that run is short and has no stateful phase (nothing to link).
AUTHENTICATED = ("--max-examples", "100", "--phases", "examples,coverage,fuzzing,stateful")
ANONYMOUS = ("--max-examples", "30", "--phases", "examples,coverage,fuzzing")


@pytest.fixture
async def webhook(db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A `clarion-webhook` process with a Telegram, an email and a webpush channel and one unlimited API
    key."""
    await db.execute(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('shop', 'alerts', 'telegram', 1, 'http://127.0.0.1:9', '{}', true),
                  ('shop', 'mail', 'email', NULL, NULL, $1, true),
                  ('shop', 'push', 'webpush', NULL, NULL, '{"subject": "mailto:ops@shop.example"}', true)""",
        {"host": "127.0.0.1", "port": 2525, "from": "shop@example.org"})
    await keys.sync_api_key(db, ApiKeySecret(
        namespace="shop", name="backend", uid="uid-backend",
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest(), channels=("*",), rate_per_minute=None))
    port = free_port()
    log = tmp_path / "webhook.log"
    env = dict(os.environ) | {"CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                              "CLARION_LOG_FORMAT": "json", "CLARION_CHANNEL_CACHE_SECONDS": "0"}
    with log.open("ab") as out:
        process = subprocess.Popen([str(BIN / "clarion-webhook"), "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/readyz")).status_code == 200

    try:
        up: bool = await async_wait_for(ready, timeout=30, interval=0.2, what="the webhook to be ready",
                                        ignore=(httpx.TransportError,))
        assert up
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
    # uvicorn shuts down cleanly on SIGTERM, then ends itself with that signal
    assert process.returncode in (0, -15), log.read_text()[-3000:]


async def _schemathesis(base: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "schemathesis"), "--config-file", str(config), "run", f"{base}/api/v1/openapi.json",
            "--checks", CHECKS, "--seed", "13", "--generation-database", "none",
            # one worker: hypothesis describes filters with ast.parse, which CPython 3.11 does not
            # allow from two threads at once (SystemError: AST constructor recursion depth mismatch)
            "--workers", "1", "--no-color", "--output-truncate", "false", *extra]
    # run in the test's directory: schemathesis keeps a cache of what failed (.schemathesis/) in its cwd
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=300,
                                   cwd=config.parent,
                                   env=dict(os.environ) | {"SCHEMATHESIS_TELEMETRY": "false"})


def _report(run: subprocess.CompletedProcess[str]) -> str:
    """The run's report, each line cut to 400 characters (a generated body can be 600 kB)."""
    return "\n".join(line[:400] for line in (run.stdout + run.stderr).splitlines()[-400:])


async def test_schemathesis_finds_no_server_error_and_no_response_that_breaks_the_schema(
    webhook: str, db: asyncpg.Pool, tmp_path: Path,
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    authenticated = await _schemathesis(webhook, config, *AUTHENTICATED,
                                        "--header", f"Authorization: Bearer {KEY}")
    assert authenticated.returncode == 0, _report(authenticated)
    # The run got past the key and the schema: the document's examples and the calls linked from their
    # Location headers were accepted and read back.
    accepted = await db.fetchval("SELECT count(*) FROM notifications")
    assert accepted > 0, _report(authenticated)

    anonymous = await _schemathesis(webhook, config, *ANONYMOUS)
    assert anonymous.returncode == 0, _report(anonymous)
    assert await db.fetchval("SELECT count(*) FROM notifications") == accepted


@pytest.mark.parametrize(("body", "field"), [
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": "a\u0000b"}}, "content.text"),
    ({"channel": "shop/mail", "recipient": {"email": "a@example.org"},
      "content": {"subject": "Hi", "text": "x", "html": "<p>\u0000</p>"}}, "content.html"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": "x"}, "reference": "\u0000"},
     "reference"),
])
async def test_a_nul_character_postgres_cannot_store_is_a_422_naming_the_field(
    webhook: str, db: asyncpg.Pool, body: dict[str, object], field: str,
) -> None:
    """Found by the run above: U+0000 reached Postgres, which refused it, and the API answered 503."""
    async with httpx.AsyncClient(base_url=webhook, headers={"Authorization": f"Bearer {KEY}"}) as client:
        answer = await client.post("/api/v1/notifications", json=body)
        listed = await client.get("/api/v1/notifications", params={"reference": "a\u0000"})

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert listed.status_code == 422 and listed.json()["error"]["field"] == "reference"
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
