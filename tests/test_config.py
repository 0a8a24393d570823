"""Configuration: flag > environment > .env > configs/*.toml > default; invalid values
name the variable and the value; API keys are checked and never echoed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from turborun.config import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WORKERS,
    Limit,
    default_processes,
    load_config,
    max_processes,
    require_keys,
)
from turborun.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(folder: Path, *, dotenv: str | None = None, toml: str | None = None) -> Path:
    if dotenv is not None:
        (folder / ".env").write_text(dotenv)
    if toml is not None:
        (folder / "configs").mkdir(exist_ok=True)
        (folder / "configs" / "limits.toml").write_text(toml)
    return folder


def test_defaults_without_any_source(tmp_path: Path) -> None:
    config = load_config({}, environ={}, cwd=tmp_path)
    assert config.workers is None  # auto: DEFAULT_WORKERS to start, sized from the limits
    assert config.start_workers == DEFAULT_WORKERS
    assert config.max_in_flight == DEFAULT_MAX_IN_FLIGHT
    assert config.processes == default_processes()
    assert config.strategy == "critical-path"
    assert config.max_retries == DEFAULT_MAX_RETRIES
    assert config.timeout_s == DEFAULT_TIMEOUT_S
    assert config.checkpoint_dir == Path("checkpoints")
    assert config.api_keys == {} and config.base_urls == {}
    assert config.limit_for("openai", "gpt-4o-mini") == Limit()


def test_each_source_beats_the_ones_below_it(tmp_path: Path) -> None:
    write(
        tmp_path,
        dotenv="TURBORUN_WORKERS=30\nTURBORUN_MAX_RETRIES=3\nTURBORUN_TIMEOUT_S=30\n",
        toml="[defaults]\nworkers = 40\nmax_retries = 4\ntimeout_s = 40\nstrategy = 'fifo'\n",
    )
    environ = {"TURBORUN_WORKERS": "20", "TURBORUN_MAX_RETRIES": "2"}
    config = load_config({"workers": 10, "max_retries": None}, environ=environ, cwd=tmp_path)
    assert config.workers == 10  # flag
    assert config.max_retries == 2  # environment (the flag is None: not given)
    assert config.timeout_s == 30.0  # .env
    assert config.strategy == "fifo"  # configs/*.toml
    assert config.checkpoint_dir == Path("checkpoints")  # default


def test_dotenv_neither_overrides_the_environment_nor_enters_it(tmp_path: Path) -> None:
    write(tmp_path, dotenv="OPENAI_API_KEY=sk-from-dotenv\nGROQ_API_KEY=gsk-from-dotenv\n")
    config = load_config({}, environ={"OPENAI_API_KEY": "sk-real"}, cwd=tmp_path)
    assert config.api_keys == {"openai": "sk-real", "groq": "gsk-from-dotenv"}
    assert os.environ.get("GROQ_API_KEY") != "gsk-from-dotenv"


def test_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    write(tmp_path, dotenv="TURBORUN_WORKERS=30\n")
    config = load_config({}, environ={"TURBORUN_WORKERS": ""}, cwd=tmp_path)
    assert config.workers == 30


def test_limits_model_from_configs_provider_from_environment_override_from_flags(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        toml='[openai]\nrpm = 100\n[openai."gpt-4o-mini"]\nrpm = 5000\ntpm = 2000000\n'
        '[groq."llama-3.1-8b-instant"]\nrpm = 30\n',
    )
    environ = {"TURBORUN_OPENAI_RPM": "500", "TURBORUN_OPENAI_TPM": "90000"}
    config = load_config({}, environ=environ, cwd=tmp_path)
    assert config.model_limits[("openai", "gpt-4o-mini")] == Limit(rpm=5000, tpm=2_000_000)
    assert config.provider_limits["openai"] == Limit(rpm=500, tpm=90000)
    assert config.limit_for("openai", "gpt-4o-mini") == Limit(rpm=5000, tpm=2_000_000)
    assert config.limit_for("openai", "gpt-4o") == Limit(rpm=500, tpm=90000)
    assert config.limit_for("groq", "llama-3.1-8b-instant") == Limit(rpm=30, tpm=None)
    assert config.limit_for("groq", "other") == Limit()
    # configs' provider table is below the environment:
    assert load_config({}, environ={}, cwd=tmp_path).limit_for("openai", "x") == Limit(rpm=100)
    flagged = load_config({"rpm": 60, "tpm": None}, environ=environ, cwd=tmp_path)
    assert flagged.limit_for("openai", "gpt-4o-mini") == Limit(rpm=60, tpm=2_000_000)
    assert flagged.limit_for("groq", "other") == Limit(rpm=60)


def test_model_listed_with_rpm_only_takes_its_providers_tpm(tmp_path: Path) -> None:
    write(tmp_path, toml='[openai."gpt-4o"]\nrpm = 5000\n')
    config = load_config({}, environ={"TURBORUN_OPENAI_TPM": "800000"}, cwd=tmp_path)
    assert config.limit_for("openai", "gpt-4o") == Limit(rpm=5000, tpm=800000)


def test_later_configs_file_wins(tmp_path: Path) -> None:
    write(tmp_path, toml='[openai."m"]\nrpm = 1\ntpm = 2\n')
    (tmp_path / "configs" / "zz-local.toml").write_text('[openai."m"]\nrpm = 10\n')
    config = load_config({}, environ={}, cwd=tmp_path)
    assert config.model_limits[("openai", "m")] == Limit(rpm=10, tpm=2)


def test_processes_above_workers_are_clamped(tmp_path: Path) -> None:
    config = load_config({"workers": 2, "processes": 6}, environ={}, cwd=tmp_path)
    assert (config.workers, config.processes) == (2, 2)


def test_flags_for_simulate_progress_and_checkpoint_dir(tmp_path: Path) -> None:
    config = load_config(
        {"simulate": True, "progress": False, "checkpoint_dir": tmp_path / "cp"},
        environ={"TURBORUN_CHECKPOINT_DIR": "/elsewhere"},
        cwd=tmp_path,
    )
    assert config.simulate is True and config.progress is False
    assert config.checkpoint_dir == tmp_path / "cp"
    env_only = load_config({}, environ={"TURBORUN_CHECKPOINT_DIR": "/elsewhere"}, cwd=tmp_path)
    assert env_only.checkpoint_dir == Path("/elsewhere")


def test_base_urls_come_from_the_environment(tmp_path: Path) -> None:
    write(tmp_path, dotenv="GROQ_BASE_URL=http://127.0.0.1:9/\n")
    config = load_config({}, environ={"OPENAI_BASE_URL": "http://127.0.0.1:8/v1"}, cwd=tmp_path)
    assert config.base_urls == {"openai": "http://127.0.0.1:8/v1", "groq": "http://127.0.0.1:9/"}


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("TURBORUN_WORKERS", "abc", "is not a positive integer"),
        ("TURBORUN_WORKERS", "0", "is not a positive integer"),
        ("TURBORUN_WORKERS", "2.5", "is not a positive integer"),
        ("TURBORUN_PROCESSES", "0", "is not a positive integer"),
        ("TURBORUN_MAX_RETRIES", "-1", "is not a non-negative integer"),
        ("TURBORUN_TIMEOUT_S", "0", "is not a positive number"),
        ("TURBORUN_TIMEOUT_S", "nan", "is not a positive number"),
        ("TURBORUN_STRATEGY", "random", "is not one of critical-path, tokens, fifo"),
        ("TURBORUN_OPENAI_RPM", "-5", "is not a positive number"),
        ("TURBORUN_GROQ_TPM", "lots", "is not a positive number"),
        ("OPENAI_BASE_URL", "api.openai.com", "is not an http:// or https:// URL"),
    ],
)
def test_invalid_environment_value_names_variable_and_value(
    tmp_path: Path, variable: str, value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config({}, environ={variable: value}, cwd=tmp_path)
    assert str(error.value) == f"{variable}={value!r} {words}"
    assert (error.value.variable, error.value.value) == (variable, value)


def test_invalid_dotenv_value_says_where_it_is(tmp_path: Path) -> None:
    write(tmp_path, dotenv="TURBORUN_WORKERS=many\n")
    with pytest.raises(ConfigError, match=r"TURBORUN_WORKERS='many' .* \(in .*\.env\)"):
        load_config({}, environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"workers": 0}, "--workers=0 is not a positive integer"),
        ({"max_retries": -2}, "--max-retries=-2 is not a non-negative integer"),
        ({"timeout_s": 0.0}, "--timeout=0.0 is not a positive number"),
        ({"rpm": -1.0}, "--rpm=-1.0 is not a positive number"),
        ({"tpm": 0}, "--tpm=0 is not a positive number"),
        ({"strategy": "lifo"}, "--strategy='lifo' is not one of critical-path, tokens, fifo"),
    ],
)
def test_invalid_flag_names_flag_and_value(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(flags, environ={}, cwd=tmp_path)
    assert str(error.value) == message


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting: wrokers"):
        load_config({"wrokers": 5}, environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[openai."gpt-4o-mini"]\nrpm = 5000\ntpm = = 3\n', "is not valid TOML"),
        ('[openai."gpt-4o-mini"]\nrpm = -5\n', 'openai."gpt-4o-mini".rpm=-5 is not a positive'),
        ('[openai."gpt-4o-mini"]\ntpm = "lots"\n', "tpm='lots' is not a positive number"),
        ("[defaults]\nworkers = 0\n", "defaults.workers=0 is not a positive integer"),
        ("[defaults]\nwrokers = 5\n", "defaults.wrokers is not a setting"),
        ('[opeani."gpt-4o"]\nrpm = 5\n', "'opeani' is not a provider"),
    ],
)
def test_invalid_configs_name_file_and_entry(tmp_path: Path, toml: str, words: str) -> None:
    write(tmp_path, toml=toml)
    with pytest.raises(ConfigError) as error:
        load_config({}, environ={}, cwd=tmp_path)
    assert "configs/limits.toml" in str(error.value)
    assert words in str(error.value)


def test_other_tables_in_configs_are_left_alone(tmp_path: Path) -> None:
    write(tmp_path, toml='[openai."gpt-4o-mini"]\nrpm = 5\ninput = 0.15\n[pricing]\nx = 1\n')
    config = load_config({}, environ={}, cwd=tmp_path)
    assert config.model_limits == {("openai", "gpt-4o-mini"): Limit(rpm=5)}


def test_example_limits_file_parses_once_uncommented(tmp_path: Path) -> None:
    example = (REPO / "configs" / "limits.toml").read_text()
    write(tmp_path, toml=example)
    as_shipped = load_config({}, environ={}, cwd=tmp_path)  # every entry commented out
    assert as_shipped.model_limits == {} and as_shipped.provider_limits == {}
    uncommented = re.sub(r"(?m)^# (\[|\w+ =)", r"\1", example)
    write(tmp_path, toml=uncommented)
    config = load_config({}, environ={}, cwd=tmp_path)
    assert config.limit_for("openai", "gpt-4o-mini") == Limit(rpm=5000, tpm=2_000_000)
    assert config.limit_for("groq", "llama-3.1-8b-instant") == Limit(rpm=30, tpm=6000)
    assert config.limit_for("openai", "unlisted") == Limit(rpm=500, tpm=200_000)
    assert config.workers == 120 and config.strategy == "critical-path"


def test_env_example_lists_every_variable_with_a_comment() -> None:
    text = (REPO / ".env.example").read_text()
    variables = [
        "OPENAI_API_KEY",
        "GROQ_API_KEY",
        "OPENAI_BASE_URL",
        "GROQ_BASE_URL",
        "TURBORUN_WORKERS",
        "TURBORUN_MAX_IN_FLIGHT",
        "TURBORUN_ENDPOINT_MAX_IN_FLIGHT",
        "TURBORUN_PROCESSES",
        "TURBORUN_STRATEGY",
        "TURBORUN_OPENAI_RPM",
        "TURBORUN_OPENAI_TPM",
        "TURBORUN_GROQ_RPM",
        "TURBORUN_GROQ_TPM",
        "TURBORUN_MAX_RETRIES",
        "TURBORUN_TIMEOUT_S",
        "TURBORUN_CHECKPOINT_DIR",
        "TURBORUN_VIA",
        "TURBORUN_BATCH_MAX_LINES",
        "TURBORUN_BATCH_MAX_BYTES",
        "TURBORUN_BATCH_POLL_S",
        "TURBORUN_BATCH_WINDOW",
        "TURBORUN_FLEX_FALLBACK",
        "TURBORUN_MAX_COST",
        "TURBORUN_MAX_TOKENS_TOTAL",
    ]
    for variable in variables:
        assert re.search(rf"(?m)^# {variable}=", text), variable
    # Copied to .env as it is, it changes nothing.
    assert not re.search(r"(?m)^[A-Z_]+=", text)


# --- API keys ------------------------------------------------------------------------

SECRET = "sk-proj-SECRETsecret1234567890"


def test_missing_key_for_a_provider_in_use(tmp_path: Path) -> None:
    config = load_config({}, environ={"GROQ_API_KEY": "gsk_ok"}, cwd=tmp_path)
    require_keys(config, ["groq", "fn"])  # fn steps need no key
    with pytest.raises(ConfigError) as error:
        require_keys(config, ["groq", "openai"])
    assert str(error.value) == "OPENAI_API_KEY is not set; the task file uses provider openai"
    assert (error.value.variable, error.value.value) == ("OPENAI_API_KEY", None)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "is empty"),
        (SECRET + "\n", "contains a line break"),
        (" " + SECRET, "has leading or trailing whitespace"),
        (SECRET + " ", "has leading or trailing whitespace"),
        (SECRET[:10] + "é" + SECRET[10:], "contains non-ASCII characters"),
        (SECRET[:10] + "\x00" + SECRET[10:], "contains non-printable characters"),
        (SECRET[:10] + " " + SECRET[10:], "contains whitespace"),
    ],
)
def test_malformed_key_is_named_but_never_echoed(tmp_path: Path, key: str, problem: str) -> None:
    config = load_config({}, environ={"OPENAI_API_KEY": key}, cwd=tmp_path)
    with pytest.raises(ConfigError) as error:
        require_keys(config, ["openai"])
    assert str(error.value) == f"OPENAI_API_KEY {problem}"
    assert error.value.value is None
    shown = str(error.value) + repr(error.value) + repr(error.value.args) + repr(config)
    assert "SECRET" not in shown and "1234567890" not in shown


def test_malformed_key_in_dotenv_is_caught(tmp_path: Path) -> None:
    write(tmp_path, dotenv=f'OPENAI_API_KEY="{SECRET} "\n')
    config = load_config({}, environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY has leading or trailing whitespace"):
        require_keys(config, ["openai"])


# --- endpoints and requests in flight ----------------------------------------------------


def test_several_base_urls_serve_a_provider_and_configs_name_a_models_servers(
    tmp_path: Path,
) -> None:
    toml = (
        '[openai."llama-3-8b"]\nbase_urls = ["http://gpu1:8000/v1", "http://gpu2:8000/v1/"]\n'
        '[endpoints."http://gpu2:8000/v1"]\nmax_in_flight = 48\n'
    )
    environ = {"OPENAI_BASE_URL": "http://a:1/v1, http://b:2/v1", "TURBORUN_MAX_IN_FLIGHT": "3000"}
    config = load_config({}, environ=environ, cwd=write(tmp_path, toml=toml))
    assert config.base_urls["openai"] == "http://a:1/v1"
    assert config.endpoints_for("openai", "gpt-4o-mini") == ("http://a:1/v1", "http://b:2/v1")
    assert config.endpoints_for("openai", "llama-3-8b") == (
        "http://gpu1:8000/v1",
        "http://gpu2:8000/v1/",
    )
    assert config.endpoints_for("groq", "x") == (None,)
    assert config.endpoint_cap("http://gpu2:8000/v1/") == 48
    assert config.endpoint_cap("http://gpu1:8000/v1") is None
    assert config.max_in_flight == 3000


def test_a_cap_for_every_endpoint_yields_to_a_cap_per_url(tmp_path: Path) -> None:
    toml = '[endpoints."http://gpu1:8000/v1"]\nmax_in_flight = 8\n'
    flags = {"endpoint_max_in_flight": 32}
    config = load_config(flags, environ={}, cwd=write(tmp_path, toml=toml))
    assert config.endpoint_cap("http://gpu1:8000/v1") == 8
    assert config.endpoint_cap("http://other/v1") == 32
    assert config.endpoint_cap(None) == 32


@pytest.mark.parametrize(
    ("environ", "toml", "message"),
    [
        ({"OPENAI_BASE_URL": "http://a/v1,ftp://b"}, "", "is not an http:// or https:// URL"),
        ({"OPENAI_BASE_URL": "http://a/v1,http://a/v1"}, "", "names the same URL twice"),
        ({"TURBORUN_MAX_IN_FLIGHT": "0"}, "", "TURBORUN_MAX_IN_FLIGHT='0' is not a positive"),
        ({}, '[endpoints."http://a/v1"]\nmax_in_flight = -1\n', "max_in_flight=-1"),
        ({}, '[endpoints."http://a/v1"]\nweight = 2\n', "takes only max_in_flight"),
        ({}, '[endpoints."gpu1"]\nmax_in_flight = 2\n', "is not an http:// or https://"),
        ({}, '[openai."m"]\nbase_urls = []\n', "holds no URL"),
    ],
)
def test_bad_endpoint_settings_name_the_setting(
    tmp_path: Path, environ: dict[str, str], toml: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config({}, environ=environ, cwd=write(tmp_path, toml=toml or None))


# ---- files that are not what their name says, and bounds ------------------------------


def test_dotenv_in_utf16_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes("TURBORUN_WORKERS=33\n".encode("utf-16"))
    assert load_config({}, environ={}, cwd=tmp_path).workers == 33


def test_utf8_byte_order_mark_does_not_rename_the_first_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfTURBORUN_WORKERS=34\n")
    assert load_config({}, environ={}, cwd=tmp_path).workers == 34


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (bytes(range(256)) * 2, "is not UTF-8 text (byte 129); save it as UTF-8"),
        ("TURBORUN_WORKERS=3\n".encode("utf-16-le"), "holds NUL bytes"),
        (b"\xff\xfe\x00\xd8", "is not UTF-16 text"),  # a lone surrogate after the mark
    ],
    ids=["binary", "utf16-without-mark", "broken-utf16"],
)
def test_unreadable_dotenv_is_a_clear_error(tmp_path: Path, data: bytes, words: str) -> None:
    (tmp_path / ".env").write_bytes(data)
    with pytest.raises(ConfigError) as error:
        load_config({}, environ={}, cwd=tmp_path)
    assert str(tmp_path / ".env") in str(error.value) and words in str(error.value)


def test_a_directory_named_dotenv_is_not_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()  # a virtual environment, often
    assert load_config({}, environ={}, cwd=tmp_path).workers is None


def test_a_directory_named_like_a_configs_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "configs" / "limits.toml").mkdir(parents=True)
    with pytest.raises(ConfigError, match="^configs/limits.toml is a directory, not a TOML file$"):
        load_config({}, environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "label"),
    [
        ({"processes": 100_000, "workers": 100_000}, {}, None, "--processes=100000"),
        ({}, {"TURBORUN_PROCESSES": "5000"}, None, "TURBORUN_PROCESSES='5000'"),
        ({}, {}, "[defaults]\nprocesses = 999\n", "defaults.processes=999"),
    ],
)
def test_processes_beyond_four_per_cpu_are_refused_naming_the_source(
    tmp_path: Path, flags: dict[str, object], environ: dict[str, str], toml: str | None, label: str
) -> None:
    if toml is not None:
        write(tmp_path, toml=toml)
    with pytest.raises(ConfigError) as error:
        load_config(flags, environ=environ, cwd=tmp_path)
    assert str(error.value).startswith(f"{label} is more than {max_processes()} (4 per CPU, ")


def test_processes_up_to_the_bound_are_accepted(tmp_path: Path) -> None:
    config = load_config({"processes": max_processes()}, environ={}, cwd=tmp_path)
    assert config.processes == max_processes() == 4 * (os.cpu_count() or 1)


@pytest.mark.parametrize(
    "value",
    [
        "KEY",  # a key pasted into the URL variable
        "https://user:KEY@api.example.com/v1,https://user:KEY@api.example.com/v1",
        "ftp://api.example.com/v1?api_key=KEY",
        "http://user:KEY@127.0.0.1:99999999/v1",  # a bad port
        "http://127.0.0.1:KEY/v1",
        "http://[KEY/v1",
    ],
)
def test_base_url_errors_never_show_a_key(tmp_path: Path, value: str) -> None:
    key = "sk-proj-Zq81xLmN0pQ4rStUvW2yZa3bCd"
    with pytest.raises(ConfigError) as error:
        load_config({}, environ={"OPENAI_BASE_URL": value.replace("KEY", key)}, cwd=tmp_path)
    assert "OPENAI_BASE_URL" in str(error.value)
    assert key not in str(error.value) and key not in str(error.value.value)
