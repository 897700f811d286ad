"""Settings precedence: flags > TOML config file > GEMMAKIT_* environment > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemmakit.errors import ConfigError
from gemmakit.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.upper().startswith("GEMMAKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)  # no stray config files from the working directory


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gemmakit.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path):
    s = Settings.load()
    assert s.port == 8000
    assert s.host == "127.0.0.1"
    assert s.log_level == "info"
    assert s.context_length is None
    assert s.model == "gemma-3-270m"
    assert s.engine == "llamacpp"
    assert s.home == tmp_path / "xdg" / "gemmakit"
    assert s.models_dir == s.home / "models"


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    monkeypatch.setenv("GEMMAKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEMMAKIT_LOG_LEVEL", "debug")
    s = Settings.load()
    assert s.port == 9001
    assert s.home == tmp_path / "home"
    assert s.log_level == "debug"


def test_config_file_overrides_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    monkeypatch.setenv("GEMMAKIT_HOST", "0.0.0.0")
    cfg = write_toml(tmp_path, "port = 9002\ncontext_length = 4096\n")
    s = Settings.load(cfg)
    assert s.port == 9002              # file beats environment
    assert s.context_length == 4096    # file beats default
    assert s.host == "0.0.0.0"         # environment still fills what the file leaves out


def test_flags_override_config_file_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    monkeypatch.setenv("GEMMAKIT_LOG_LEVEL", "error")
    cfg = write_toml(tmp_path, 'port = 9002\nlog_level = "warning"\n')
    s = Settings.load(cfg, port=9003)
    assert s.port == 9003
    assert s.log_level == "warning"


def test_flag_overrides_environment_without_a_file(monkeypatch):
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    assert Settings.load(port=9004).port == 9004


def test_none_flags_mean_not_given(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    cfg = write_toml(tmp_path, "threads = 3\n")
    s = Settings.load(cfg, port=None, threads=None, log_level=None)
    assert s.port == 9001
    assert s.threads == 3
    assert s.log_level == "info"


def test_config_file_as_str_path(tmp_path):
    cfg = write_toml(tmp_path, 'model = "/models/gemma.gguf"\n')
    assert Settings.load(str(cfg)).model == "/models/gemma.gguf"


def test_config_file_is_not_shared_between_loads(tmp_path):
    cfg = write_toml(tmp_path, "port = 9002\n")
    assert Settings.load(cfg).port == 9002
    assert Settings.load().port == 8000


def test_unknown_toml_key_is_a_config_error(tmp_path):
    cfg = write_toml(tmp_path, "port = 9002\nbogus_key = 1\n")
    with pytest.raises(ConfigError, match="bogus_key"):
        Settings.load(cfg)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        Settings.load(tmp_path / "nope.toml")


def test_malformed_toml_is_a_config_error(tmp_path):
    cfg = write_toml(tmp_path, "port = = 3\n[[[\n")
    with pytest.raises(ConfigError):
        Settings.load(cfg)


@pytest.mark.parametrize("source", ["flag", "file", "env"])
def test_out_of_range_port_is_a_config_error(source, monkeypatch, tmp_path):
    kwargs = {}
    cfg = None
    if source == "flag":
        kwargs["port"] = 70000
    elif source == "file":
        cfg = write_toml(tmp_path, "port = 70000\n")
    else:
        monkeypatch.setenv("GEMMAKIT_PORT", "70000")
    with pytest.raises(ConfigError) as ei:
        Settings.load(cfg, **kwargs)
    assert "port" in ei.value.message
    assert ei.value.code == "configuration_error"


@pytest.mark.parametrize("flags", [
    {"log_level": "loud"},
    {"context_length": 8},
    {"threads": 0},
    {"max_body_bytes": 10},
    {"port": "not-a-number"},
])
def test_bad_values_are_config_errors(flags):
    with pytest.raises(ConfigError):
        Settings.load(**flags)


def test_config_error_is_not_a_pydantic_traceback():
    with pytest.raises(ConfigError) as ei:
        Settings.load(port=70000)
    # raised "from None": no chained ValidationError for the CLI to print
    assert ei.value.__cause__ is None
    assert ei.value.__suppress_context__


@pytest.mark.parametrize("engine", ["transformers", "remote"])
def test_prompt_lookup_on_another_engine_is_refused_not_ignored(engine, tmp_path):
    from gemmakit.compose import plan

    s = Settings.load(home=tmp_path, engine=engine, prompt_lookup=8)
    with pytest.raises(ConfigError, match="prompt-lookup is an option of the llamacpp engine"):
        plan(s, progress=False)
    with pytest.raises(ConfigError):
        Settings.load(prompt_lookup=17)  # at most 16 draft tokens
