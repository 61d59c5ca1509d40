"""Process settings, read from `CLARION_*` environment variables.

Each process builds its settings object in `main()`; nothing is read at import time.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings every Clarion process shares."""

    model_config = SettingsConfigDict(env_prefix="CLARION_", extra="ignore")

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://clarion@127.0.0.1:55432/postgres"),
        description="asyncpg DSN of the Postgres database that is the source of truth.",
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:56379/0"),
        description="Redis URL for streams, rate limits, dedup keys and FSM state.",
    )
    log_level: str = Field(default="INFO", description="Log level name.")
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$",
                            description="`json` off a TTY by default; `console` for humans.")
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=500)
    metrics_port: int = Field(default=0, ge=0, le=65535,
                              description="Port of a standalone /metrics server; 0 disables it.")
    outage_tolerance_seconds: float = Field(
        default=300.0, gt=0, le=86400,
        description="How long a process that holds work waits for Postgres or Redis to come back "
                    "(retrying with backoff) before it gives up and exits non-zero.",
    )
