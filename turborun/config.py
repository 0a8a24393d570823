"""Config: flag > environment > .env in the working directory > configs/*.toml > default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WORKERS = 120
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_S = 120.0
STRATEGIES = ("critical-path", "tokens", "fifo")


def default_processes() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Limit:
    """Per-minute limits of one (provider, model); None: not configured (learned)."""

    rpm: float | None = None
    tpm: float | None = None


@dataclass(slots=True)
class Config:
    workers: int = DEFAULT_WORKERS
    processes: int = field(default_factory=default_processes)
    strategy: str = "critical-path"
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout_s: float = DEFAULT_TIMEOUT_S
    checkpoint_dir: Path = Path("checkpoints")
    # Limits: model_limits[(provider, model)] from configs/*.toml; provider_limits[provider]
    # from TURBORUN_<PROVIDER>_RPM/TPM for models configs/ does not list; override (flags
    # --rpm/--tpm) applies to every model of every provider.
    model_limits: dict[tuple[str, str], Limit] = field(default_factory=dict)
    provider_limits: dict[str, Limit] = field(default_factory=dict)
    override_limit: Limit = field(default_factory=Limit)
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)
    base_urls: dict[str, str] = field(default_factory=dict)
    # Pricing: USD per million tokens, by (provider, model): {"input", "cached_input", "output"}
    pricing: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    breaker_failures: int = 8  # consecutive failures on one bucket before a cool-down
    breaker_cooldown_s: float = 30.0
    grace_s: float = 15.0  # how long Ctrl-C lets in-flight requests finish
    simulate: bool = False
    progress: bool = True

    def limit_for(self, provider: str, model: str) -> Limit:
        """Effective configured limit of one bucket (fields None: learn them)."""
        base = self.model_limits.get((provider, model)) or self.provider_limits.get(
            provider, Limit()
        )
        return Limit(
            rpm=self.override_limit.rpm if self.override_limit.rpm is not None else base.rpm,
            tpm=self.override_limit.tpm if self.override_limit.tpm is not None else base.tpm,
        )
