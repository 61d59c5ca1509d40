"""Latency and fault injection per Bot API method."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyModel:
    """Round-trip latency: uniform in [mean - jitter, mean + jitter] seconds, never negative.

    Half of it is spent before the request is processed and half before the reply is written,
    so a request's accept time sits in the middle of its round trip.
    """

    mean_s: float = 0.0
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mean_s < 0 or self.jitter_s < 0:
            raise ValueError("latency mean and jitter must be >= 0")

    def sample(self, rng: random.Random) -> float:
        if self.jitter_s == 0.0:
            return self.mean_s
        return max(0.0, self.mean_s + rng.uniform(-self.jitter_s, self.jitter_s))


@dataclass(frozen=True)
class FaultConfig:
    """What happens to a share of the requests of one method (rates are probabilities 0..1).

    error_rate_5xx: answered `{"ok":false,"error_code":<error_status>,...}`, nothing processed.
    timeout_rate: held for `timeout_hold_s`, then the connection is closed; nothing processed.
    drop_rate: the connection is closed at once; nothing processed.
    lost_response_rate: processed (the message counts as sent), then the connection is closed.
    """

    latency: LatencyModel | None = None
    error_rate_5xx: float = 0.0
    error_status: int = 500
    timeout_rate: float = 0.0
    timeout_hold_s: float = 30.0
    drop_rate: float = 0.0
    lost_response_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate_5xx", "timeout_rate", "drop_rate", "lost_response_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.error_status not in (500, 502, 503, 504):
            raise ValueError("error_status must be one of 500, 502, 503, 504")
        if not 0.0 < self.timeout_hold_s <= 600.0:
            raise ValueError("timeout_hold_s must be within (0, 600]")


STATUS_TEXT = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
               504: "Gateway Timeout"}


@dataclass
class Faults:
    """Per-method fault settings; the method "*" applies to methods without their own entry."""

    seed: int | None = None
    _by_method: dict[str, FaultConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def set(
        self,
        method: str,
        latency: tuple[float, float] | LatencyModel | None = None,
        error_rate_5xx: float = 0.0,
        timeout_rate: float = 0.0,
        drop_rate: float = 0.0,
        *,
        error_status: int = 500,
        timeout_hold_s: float = 30.0,
        lost_response_rate: float = 0.0,
    ) -> FaultConfig:
        """Replace the faults of `method` (case-insensitive; "*" for every method)."""
        model = LatencyModel(*latency) if isinstance(latency, tuple) else latency
        config = FaultConfig(model, error_rate_5xx, error_status, timeout_rate, timeout_hold_s,
                             drop_rate, lost_response_rate)
        self._by_method[method.lower()] = config
        return config

    def clear(self, method: str | None = None) -> None:
        """Remove the faults of one method, or all of them."""
        if method is None:
            self._by_method.clear()
        else:
            self._by_method.pop(method.lower(), None)

    def get(self, method_lower: str) -> FaultConfig | None:
        if not self._by_method:
            return None
        return self._by_method.get(method_lower) or self._by_method.get("*")
