"""Config: flag > environment > .env in the working directory > configs/*.toml > default.

``load_config`` reads every source once and returns a plain ``Config``; nothing
is read at import and ``.env`` never goes into ``os.environ`` (so it never
overrides the real environment, and two Runners never see each other's files).
An invalid value is a ``ConfigError`` naming the variable and the value; an API
key is never echoed (``require_keys``).
"""

from __future__ import annotations

import codecs
import io
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args
from urllib.parse import urlsplit

from dotenv import dotenv_values

from turborun.exceptions import ConfigError
from turborun.keys import display_url

DEFAULT_WORKERS = 120  # requests in flight at the start of a run (auto sizing grows it)
DEFAULT_MAX_IN_FLIGHT = 8192  # the ceiling of auto sizing
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_S = 120.0
Strategy = Literal["critical-path", "tokens", "fifo"]
Via = Literal["live", "batch"]  # how API tasks are sent (--via)
Backend = Literal["local", "ray"]  # where the worker processes run (--backend)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
VIAS: tuple[str, ...] = get_args(Via)
BACKENDS: tuple[str, ...] = get_args(Backend)


def default_processes() -> int:
    return max(1, min(8, os.cpu_count() or 1))


PROCESSES_PER_CPU = 4  # the most worker processes a run may start, per CPU


def max_processes() -> int:
    """The bound on ``--processes`` for the local backend. A worker process carries
    thousands of requests on its event loop; past a few per CPU more processes add
    memory (tens of MiB each), not speed (``--processes 100000`` ran a machine out of
    memory)."""
    return PROCESSES_PER_CPU * (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Limit:
    """Per-minute limits of one (provider, model); None: not configured (learned)."""

    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """One run's settings, immutable: ``load_config`` builds it in one call and a
    variant is made with ``dataclasses.replace`` (a run that points the providers at
    its simulator makes its own copy; the caller's Config never changes)."""

    workers: int | None = None  # None: auto (DEFAULT_WORKERS to start, sized by rate × latency)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    endpoint_max_in_flight: int | None = None  # a cap for every endpoint
    processes: int = field(default_factory=default_processes)
    strategy: Strategy = "critical-path"
    backend: Backend = "local"  # "ray": worker processes as Ray actors (turborun/ray_pool.py)
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
    # Several base URLs serving one provider (OPENAI_BASE_URL=a,b) or one model (configs/)
    provider_endpoints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    model_endpoints: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    endpoint_caps: dict[str, int] = field(default_factory=dict)  # base URL -> max_in_flight
    # Pricing: USD per million tokens, by (provider, model): {"input", "cached_input", "output"}
    pricing: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    breaker_failures: int = 20  # failures judged before a cool-down (budget/breaker.py)
    breaker_cooldown_s: float = 30.0
    grace_s: float = 15.0  # how long Ctrl-C lets in-flight requests finish
    simulate: bool = False
    # --via batch (turborun/batches/, docs/BATCH.md) and the flex tier
    via: Via = "live"  # "batch": API tasks go through the providers' Batch APIs
    batch_max_lines: int | None = None  # per input file; None: the provider's (50,000)
    batch_max_bytes: int | None = None  # per input file; None: the provider's (200/100 MB)
    batch_poll_s: float = 5.0  # first poll of a batch; backs off 1.5x to 60x this (10 min cap)
    batch_window: str = "24h"  # completion_window of each batch
    cancel_on_interrupt: bool = False  # Ctrl-C cancels the run's batches instead of leaving them
    flex_fallback: int | None = None  # after N flex capacity errors, send at the standard tier
    # Spend caps (turborun/spend.py): USD for the run, USD per (provider, model) from
    # configs/ (max_cost in a model's table), tokens (prompt + output) for the run.
    max_cost: float | None = None  # USD
    model_caps_usd: dict[tuple[str, str], float] = field(default_factory=dict)
    max_tokens_total: int | None = None
    progress: bool = True

    @property
    def start_workers(self) -> int:
        """Requests in flight at the start: ``workers`` when fixed, else DEFAULT_WORKERS."""
        return self.workers if self.workers is not None else DEFAULT_WORKERS

    def endpoints_for(self, provider: str, model: str) -> tuple[str | None, ...]:
        """Base URLs serving (provider, model); (None,): the provider's configured one."""
        urls = self.model_endpoints.get((provider, model)) or self.provider_endpoints.get(provider)
        return urls or (None,)

    def endpoint_cap(self, url: str | None) -> int | None:
        """An explicit cap on requests in flight to one base URL, if any."""
        key = url if url is not None else ""
        return self.endpoint_caps.get(key.rstrip("/"), self.endpoint_max_in_flight)

    def limit_for(self, provider: str, model: str) -> Limit:
        """Effective configured limit of one bucket (fields None: learn them)."""
        # Field by field, the most specific source that gives a value wins: a model
        # that configs/ lists with rpm only still takes its provider's tpm.
        layers = (
            self.override_limit,
            self.model_limits.get((provider, model), Limit()),
            self.provider_limits.get(provider, Limit()),
        )
        return Limit(
            rpm=next((x.rpm for x in layers if x.rpm is not None), None),
            tpm=next((x.tpm for x in layers if x.tpm is not None), None),
        )


# Providers and their variables. A provider missing here takes no key (fn steps).
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "groq": "GROQ_API_KEY"}
BASE_URL_VARIABLES = {"openai": "OPENAI_BASE_URL", "groq": "GROQ_BASE_URL"}
CONFIGS_DIR = "configs"
DOTENV_FILE = ".env"
# Flag keys as the command line spells them (error messages name what the user typed).
FLAG_NAMES = {
    "workers": "--workers",
    "max_in_flight": "--max-in-flight",
    "endpoint_max_in_flight": "--endpoint-max-in-flight",
    "processes": "--processes",
    "strategy": "--strategy",
    "backend": "--backend",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_retries": "--max-retries",
    "timeout_s": "--timeout",
    "checkpoint_dir": "checkpoint_dir",
    "via": "--via",
    "batch_max_lines": "--batch-max-lines",
    "batch_max_bytes": "--batch-max-bytes",
    "batch_poll_s": "--batch-poll",
    "batch_window": "--batch-window",
    "flex_fallback": "--flex-fallback",
    "max_cost": "--max-cost",
    "max_tokens_total": "--max-tokens-total",
}
_SWITCHES = ("simulate", "progress", "cancel_on_interrupt")  # flags without a variable


class Settings(TypedDict, total=False):
    """What ``load_config`` (and so ``execute_batch``/``Runner``) takes by name: the
    command line's flags, spelled as Python names. Absent or None: the environment,
    ``.env``, ``configs/*.toml`` or the default decides (SPEC §8)."""

    workers: int | None  # requests in flight, fixed (None: auto)
    max_in_flight: int | None  # ceiling of the auto sizing
    endpoint_max_in_flight: int | None  # cap per base URL
    processes: int | None
    strategy: Strategy | None
    backend: Backend | None
    rpm: float | None  # per-minute limits for every model of the run
    tpm: float | None
    max_retries: int | None
    timeout_s: float | None
    checkpoint_dir: str | os.PathLike[str] | None
    via: Via | None
    batch_max_lines: int | None
    batch_max_bytes: int | None
    batch_poll_s: float | None
    batch_window: str | None  # "24h", "7d"
    flex_fallback: int | None
    max_cost: float | None  # USD
    max_tokens_total: int | None
    simulate: bool | None
    cancel_on_interrupt: bool | None
    # load_config also takes "progress" (the command line's display on or off);
    # execute_batch has a progress parameter of its own, so it is not a setting here.


_LIMIT_KEYS = ("rpm", "tpm")
# A word of 20+ key characters holding letters and digits: what a pasted API key looks like.
_WORD = re.compile(r"[A-Za-z0-9_-]{20,}")

_Parser = Callable[[str, Any, str], Any]


def _is_unset(raw: Any) -> bool:
    # An empty variable (TURBORUN_WORKERS=) counts as unset, as most tools treat it.
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


def _fail(label: str, raw: Any, what: str, where: str) -> ConfigError:
    suffix = f" (in {where})" if where else ""
    return ConfigError(label, str(raw), f"{label}={raw!r} {what}{suffix}")


def _integer(label: str, raw: Any, minimum: int, what: str, where: str) -> int:
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
    if value is None or value < minimum:
        raise _fail(label, raw, what, where)
    return value


def _positive_int(label: str, raw: Any, where: str = "") -> int:
    return _integer(label, raw, 1, "is not a positive integer", where)


def _non_negative_int(label: str, raw: Any, where: str = "") -> int:
    return _integer(label, raw, 0, "is not a non-negative integer", where)


def _positive_number(label: str, raw: Any, where: str = "") -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise _fail(label, raw, "is not a positive number", where)
    return value


def _strategy(label: str, raw: Any, where: str = "") -> str:
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value not in STRATEGIES:
        raise _fail(label, raw, f"is not one of {', '.join(STRATEGIES)}", where)
    return value


def _backend(label: str, raw: Any, where: str = "") -> str:
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value not in BACKENDS:
        raise _fail(label, raw, f"is not one of {', '.join(BACKENDS)}", where)
    return value


def _via(label: str, raw: Any, where: str = "") -> str:
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value not in VIAS:
        raise _fail(label, raw, f"is not one of {', '.join(VIAS)}", where)
    return value


def _window(label: str, raw: Any, where: str = "") -> str:
    value = raw.strip() if isinstance(raw, str) else ""
    if not value or value[-1] not in "hd" or not value[:-1].isdigit():
        raise _fail(label, raw, "is not a completion window like 24h or 7d", where)
    return value


def _path(label: str, raw: Any, where: str = "") -> Path:
    if not isinstance(raw, str | os.PathLike):
        raise _fail(label, raw, "is not a path", where)
    return Path(raw).expanduser()


def _base_url(label: str, raw: Any, where: str = "") -> str:
    value = str(raw).strip()
    if not value.startswith(("http://", "https://")):
        raise _url_fail(label, raw, "is not an http:// or https:// URL", where)
    try:
        parts = urlsplit(value)
        valid = bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # its text may quote the URL: not shown
        valid = False
    if not valid:
        raise _url_fail(label, raw, "is not a valid URL (its host or port)", where)
    return value


def _base_urls(label: str, raw: Any, where: str = "") -> tuple[str, ...]:
    """One base URL, or several separated by commas (a model served by a fleet)."""
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    urls = tuple(_base_url(label, part, where) for part in parts if str(part).strip())
    if not urls:
        raise _url_fail(label, raw, "holds no URL", where)
    if len(set(urls)) != len(urls):
        raise _url_fail(label, raw, "names the same URL twice", where)
    return urls


def _url_fail(label: str, raw: Any, what: str, where: str) -> ConfigError:
    shown = _shown_url(raw)
    if shown is not None:
        return _fail(label, shown, what, where)
    suffix = f" (in {where})" if where else ""
    return ConfigError(label, None, f"{label} {what} (value not shown: it may hold a key){suffix}")


def _shown_url(raw: Any) -> str | None:
    """Base URLs as a message may show them: without credentials (keys.display_url);
    None when a key-like word remains (a key pasted into the URL variable)."""
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    shown = ",".join(display_url(str(part).strip()) for part in parts)
    for word in _WORD.findall(shown):
        if any(c.isdigit() for c in word) and any(c.isalpha() for c in word):
            return None
    return shown


# name -> (environment variable, parser); configs' [defaults] table takes the same names.
_SETTINGS: dict[str, tuple[str, _Parser]] = {
    "workers": ("TURBORUN_WORKERS", _positive_int),
    "max_in_flight": ("TURBORUN_MAX_IN_FLIGHT", _positive_int),
    "endpoint_max_in_flight": ("TURBORUN_ENDPOINT_MAX_IN_FLIGHT", _positive_int),
    "processes": ("TURBORUN_PROCESSES", _positive_int),
    "strategy": ("TURBORUN_STRATEGY", _strategy),
    "backend": ("TURBORUN_BACKEND", _backend),
    "max_retries": ("TURBORUN_MAX_RETRIES", _non_negative_int),
    "timeout_s": ("TURBORUN_TIMEOUT_S", _positive_number),
    "checkpoint_dir": ("TURBORUN_CHECKPOINT_DIR", _path),
    "via": ("TURBORUN_VIA", _via),
    "batch_max_lines": ("TURBORUN_BATCH_MAX_LINES", _positive_int),
    "batch_max_bytes": ("TURBORUN_BATCH_MAX_BYTES", _positive_int),
    "batch_poll_s": ("TURBORUN_BATCH_POLL_S", _positive_number),
    "batch_window": ("TURBORUN_BATCH_WINDOW", _window),
    "flex_fallback": ("TURBORUN_FLEX_FALLBACK", _positive_int),
    "max_cost": ("TURBORUN_MAX_COST", _positive_number),
    "max_tokens_total": ("TURBORUN_MAX_TOKENS_TOTAL", _positive_int),
}


@dataclass(slots=True)
class _TomlConfig:
    """What configs/*.toml give: [defaults], provider-wide and per-model limits."""

    defaults: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (value, where)
    provider_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    model_limits: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    model_endpoints: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    endpoint_caps: dict[str, int] = field(default_factory=dict)
    model_caps_usd: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Sources:
    flags: Mapping[str, Any]
    environ: Mapping[str, str]
    dotenv: Mapping[str, str | None]
    dotenv_path: str
    toml: _TomlConfig

    def variable(self, name: str) -> tuple[Any, str] | None:
        """(value, where) of an environment variable: the real environment first, then
        .env; None when neither sets it."""
        if not _is_unset(self.environ.get(name)):
            return self.environ[name], ""
        if not _is_unset(self.dotenv.get(name)):
            return self.dotenv[name], self.dotenv_path
        return None

    def origin(self, name: str) -> tuple[str, Any, str]:
        """(label, raw value, where) of the source that set a setting, for messages."""
        variable = _SETTINGS[name][0]
        if self.flags.get(name) is not None:
            return FLAG_NAMES[name], self.flags[name], ""
        found = self.variable(variable)
        if found is not None:
            return variable, found[0], found[1]
        value, where = self.toml.defaults.get(name, (None, ""))
        return f"defaults.{name}", value, where

    def setting(self, name: str) -> Any:
        """A setting by precedence, parsed; None when no source sets it."""
        variable, parse = _SETTINGS[name]
        flag = self.flags.get(name)
        if flag is not None:
            return parse(FLAG_NAMES[name], flag, "")
        found = self.variable(variable)
        if found is not None:
            return parse(variable, found[0], found[1])
        if name in self.toml.defaults:
            value, where = self.toml.defaults[name]
            return parse(f"defaults.{name}", value, where)
        return None


def load_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """The run's Config. ``flags``: the names of ``Settings`` and ``progress`` (None: not
    given; any other name is a ConfigError). ``environ``: os.environ by default;
    ``cwd``: where .env and configs/ are looked for."""
    unknown = sorted(set(flags) - set(FLAG_NAMES) - set(_SWITCHES))
    if unknown:
        raise ConfigError(unknown[0], None, f"unknown setting: {', '.join(unknown)}")
    cwd = Path.cwd() if cwd is None else Path(cwd)
    dotenv_path = cwd / DOTENV_FILE
    sources = _Sources(
        flags=flags,
        environ=os.environ if environ is None else environ,
        dotenv=_read_dotenv(dotenv_path),
        dotenv_path=str(dotenv_path),
        toml=_load_toml(cwd / CONFIGS_DIR),
    )
    values: dict[str, Any] = {}
    for name in _SETTINGS:
        value = sources.setting(name)
        if value is not None:
            values[name] = value
    processes = values.get("processes", default_processes())
    if values.get("workers") is not None:
        processes = min(processes, values["workers"])  # clamped, not an error
    values["processes"] = processes
    # The Ray backend's actors live on the cluster, whose size is not known here.
    if processes > max_processes() and values.get("backend", "local") == "local":
        label, raw, where = sources.origin("processes")
        cpus = os.cpu_count() or 1
        what = (
            f"is more than {max_processes()} ({PROCESSES_PER_CPU} per CPU, {cpus} CPUs): "
            "each process carries thousands of requests, more only cost memory"
        )
        raise _fail(label, raw, what, where)
    api_keys: dict[str, str] = {}
    for provider, variable in KEY_VARIABLES.items():
        found = sources.variable(variable)
        raw = _raw_variable(sources, variable) if found is None else found[0]
        if raw is not None:
            api_keys[provider] = raw
    base_urls: dict[str, str] = {}
    provider_endpoints: dict[str, tuple[str, ...]] = {}
    for provider, variable in BASE_URL_VARIABLES.items():
        found = sources.variable(variable)
        if found is not None:
            urls = _base_urls(variable, found[0], found[1])
            base_urls[provider] = urls[0]
            if len(urls) > 1:
                provider_endpoints[provider] = urls
    for name in _SWITCHES:
        if flags.get(name) is not None:
            values[name] = bool(flags[name])
    return Config(
        **values,
        override_limit=Limit(rpm=_flag_limit(flags, "rpm"), tpm=_flag_limit(flags, "tpm")),
        provider_limits=_provider_limits(sources),
        model_limits={
            key: Limit(rpm=limits.get("rpm"), tpm=limits.get("tpm"))
            for key, limits in sources.toml.model_limits.items()
        },
        api_keys=api_keys,
        base_urls=base_urls,
        provider_endpoints=provider_endpoints,
        model_endpoints=dict(sources.toml.model_endpoints),
        endpoint_caps=dict(sources.toml.endpoint_caps),
        model_caps_usd=dict(sources.toml.model_caps_usd),
    )


def _read_dotenv(path: Path) -> Mapping[str, str | None]:
    """.env as python-dotenv parses it, from text decoded here: UTF-8 (a byte order mark
    is dropped: dotenv would make it part of the first name) or UTF-16 with its byte
    order mark (what Windows editors and PowerShell 5's ``>`` write). Anything else (a
    binary file, UTF-16 without a mark) is a ConfigError, not a traceback. A directory
    named .env (a virtual environment, often) is not a .env file: ignored."""
    if not path.is_file():
        return {}
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(DOTENV_FILE, None, f"cannot read {path}: {error.strerror}") from None
    encoding = "utf-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        name = "UTF-16" if encoding == "utf-16" else "UTF-8"
        message = f"{path} is not {name} text (byte {error.start + 1}); save it as UTF-8"
        raise ConfigError(DOTENV_FILE, None, message) from None
    if "\x00" in text:
        what = "binary, or UTF-16 without a byte order mark"
        raise ConfigError(DOTENV_FILE, None, f"{path} holds NUL bytes ({what}); save it as UTF-8")
    return dotenv_values(stream=io.StringIO(text))


def _raw_variable(sources: _Sources, variable: str) -> str | None:
    """An API key set but empty is kept (require_keys calls it empty, rather than
    missing); ``_Sources.variable`` treats empty as unset."""
    for mapping in (sources.environ, sources.dotenv):
        raw = mapping.get(variable)
        if raw is not None:
            return raw
    return None


def _flag_limit(flags: Mapping[str, Any], name: str) -> float | None:
    raw = flags.get(name)
    return None if raw is None else _positive_number(FLAG_NAMES[name], raw)


def _provider_limits(sources: _Sources) -> dict[str, Limit]:
    """TURBORUN_<PROVIDER>_RPM/TPM (environment, then .env), then configs' provider
    tables (``[openai] rpm = ...``): the limit of that provider's unlisted models."""
    limits: dict[str, Limit] = {}
    for provider in KEY_VARIABLES:
        values: dict[str, float | None] = {}
        for key in _LIMIT_KEYS:
            variable = f"TURBORUN_{provider.upper()}_{key.upper()}"
            found = sources.variable(variable)
            if found is not None:
                values[key] = _positive_number(variable, found[0], found[1])
            else:
                values[key] = sources.toml.provider_limits.get(provider, {}).get(key)
        if values["rpm"] is not None or values["tpm"] is not None:
            limits[provider] = Limit(rpm=values["rpm"], tpm=values["tpm"])
    return limits


def _load_toml(folder: Path) -> _TomlConfig:
    """Merge configs/*.toml in name order (a later file wins, key by key). Tables other
    than [defaults] and the providers' are left alone: other parts of turborun may keep
    their own settings in configs/ (and keys other than rpm/tpm in a model's table)."""
    merged = _TomlConfig()
    if not folder.is_dir():
        return merged
    for path in sorted(folder.glob("*.toml")):
        where = f"{CONFIGS_DIR}/{path.name}"
        if path.is_dir():
            raise ConfigError(where, None, f"{where} is a directory, not a TOML file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(where, None, f"{where} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(where, None, f"cannot read {where}: {exc.strerror}") from None
        _merge_toml(merged, data, where)
    return merged


def _merge_toml(merged: _TomlConfig, data: dict[str, Any], where: str) -> None:
    for top, table in data.items():
        if top == "defaults":
            _merge_defaults(merged, table, where)
        elif top == "endpoints":
            _merge_endpoints(merged, table, where)
        elif top in KEY_VARIABLES:
            _merge_provider(merged, top, table, where)
        elif isinstance(table, dict) and any(
            isinstance(sub, dict) and any(k in sub for k in _LIMIT_KEYS) for sub in table.values()
        ):
            raise ConfigError(
                f"{where}: {top}",
                top,
                f"{where}: [{top}.…] sets rate limits but {top!r} is not a provider "
                f"(one of {', '.join(KEY_VARIABLES)})",
            )


def _merge_defaults(merged: _TomlConfig, table: Any, where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: defaults", str(table), f"{where}: defaults is not a table")
    for name, value in table.items():
        if name not in _SETTINGS:
            raise ConfigError(
                f"{where}: defaults.{name}",
                str(value),
                f"{where}: defaults.{name} is not a setting (one of {', '.join(_SETTINGS)})",
            )
        merged.defaults[name] = (value, where)


def _merge_provider(merged: _TomlConfig, provider: str, table: Any, where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {provider}", str(table), f"{where}: {provider} is not a table")
    for key, value in table.items():
        if key in _LIMIT_KEYS:
            label = f"{provider}.{key}"
            parsed = _positive_number(label, value, where)
            merged.provider_limits.setdefault(provider, {})[key] = parsed
        elif isinstance(value, dict):
            for limit in _LIMIT_KEYS:
                if limit in value:
                    label = f'{provider}."{key}".{limit}'
                    parsed = _positive_number(label, value[limit], where)
                    merged.model_limits.setdefault((provider, key), {})[limit] = parsed
            if "max_cost" in value:
                label = f'{provider}."{key}".max_cost'
                merged.model_caps_usd[(provider, key)] = _positive_number(
                    label, value["max_cost"], where
                )
            if "base_urls" in value:
                label = f'{provider}."{key}".base_urls'
                merged.model_endpoints[(provider, key)] = _base_urls(
                    label, value["base_urls"], where
                )


def _merge_endpoints(merged: _TomlConfig, table: Any, where: str) -> None:
    """``[endpoints."http://gpu1:8000/v1"] max_in_flight = 64``: a cap per base URL."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: endpoints", str(table), f"{where}: endpoints is not a table")
    for url, settings in table.items():
        label = f'endpoints."{_shown_url(url) or "(a URL holding a key)"}"'
        _base_url(label, url, where)
        if not isinstance(settings, dict) or set(settings) - {"max_in_flight"}:
            raise ConfigError(
                f"{where}: {label}", str(settings), f"{where}: {label} takes only max_in_flight"
            )
        if "max_in_flight" in settings:
            cap = _positive_int(f"{label}.max_in_flight", settings["max_in_flight"], where)
            merged.endpoint_caps[url.strip().rstrip("/")] = cap


def require_keys(config: Config, providers: Iterable[str]) -> None:
    """Every provider in use has a well-formed key. The error names the variable and the
    problem, never the key (value None): messages end up in terminals and logs."""
    for provider in sorted(set(providers)):
        variable = KEY_VARIABLES.get(provider)
        if variable is None:
            continue
        key = config.api_keys.get(provider)
        if key is None:
            raise ConfigError(
                variable, None, f"{variable} is not set; the task file uses provider {provider}"
            )
        problem = key_problem(key)
        if problem is not None:
            raise ConfigError(variable, None, f"{variable} {problem}")


def key_problem(key: str) -> str | None:
    """What is wrong with an API key, in words that do not reveal it; None: nothing.
    A key with a stray newline or space otherwise surfaces as a misleading connection
    error from the SDKs."""
    if key == "":
        return "is empty"
    if "\n" in key or "\r" in key:
        return "contains a line break"
    if key != key.strip():
        return "has leading or trailing whitespace"
    if not key.isascii():
        return "contains non-ASCII characters"
    if not key.isprintable():
        return "contains non-printable characters"
    if any(c.isspace() for c in key):
        return "contains whitespace"
    return None
