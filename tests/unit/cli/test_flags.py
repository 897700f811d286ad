"""Command-line flags generated from the typed settings (cli/flags.py)."""

from __future__ import annotations

import argparse
import os
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from gemmakit.cli.flags import add_model_flags, given
from gemmakit.settings import Settings
from gemmakit.types import SamplingParams


def settings_parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_model_flags(p, Settings, **kw)
    return p


def action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    for a in parser._actions:
        if flag in a.option_strings:
            return a
    raise AssertionError(f"no {flag}")


def test_one_flag_per_field():
    p = settings_parser()
    flags = {s for a in p._actions for s in a.option_strings} - {"-h", "--help"}
    expected = set()
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            continue  # a TOML section ([policy]): set in the config file, not by a flag
        item = typing.get_args(info.annotation)
        if item and isinstance(item[0], type) and issubclass(item[0], BaseModel):
            continue  # TOML tables ([[upstreams]]): no flag either
        expected.add("--" + name.replace("_", "-"))
        if info.annotation is bool:
            expected.add("--no-" + name.replace("_", "-"))
    assert flags == expected


def test_int_flag_parses_to_int():
    ns = settings_parser().parse_args(["--context-length", "2048"])
    assert ns.context_length == 2048
    assert isinstance(ns.context_length, int)
    assert given(ns, Settings) == {"context_length": 2048}


def test_non_int_value_refused():
    p = settings_parser()
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        p.parse_args(["--port", "eighty"])


def test_path_flag_parses_to_path():
    ns = settings_parser().parse_args(["--home", "/tmp/gk"])
    assert ns.home == Path("/tmp/gk")


def test_literal_flag_has_choices():
    p = settings_parser()
    assert list(action(p, "--log-level").choices) == ["debug", "info", "warning", "error"]
    assert p.parse_args(["--log-level", "debug"]).log_level == "debug"
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        p.parse_args(["--log-level", "loud"])


def test_help_text_is_the_field_docstring():
    p = settings_parser()
    assert action(p, "--port").help == Settings.model_fields["port"].description.strip()
    assert "TCP port" in action(p, "--port").help


def test_unspecified_flags_are_absent_from_given():
    ns = settings_parser().parse_args([])
    assert given(ns, Settings) == {}
    ns = settings_parser().parse_args(["--port", "0", "--model", "x.gguf"])
    # 0 is a given value, not "absent"
    assert given(ns, Settings) == {"port": 0, "model": "x.gguf"}


def test_given_ignores_other_namespace_entries():
    ns = argparse.Namespace(port=1, config="c.toml", prompt="hi", temperature=0.5)
    assert given(ns, Settings) == {"port": 1}
    assert given(ns, SamplingParams) == {"temperature": 0.5}


def test_only_and_skip():
    p = settings_parser(only=("port", "host"))
    flags = {s for a in p._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {"--port", "--host"}
    p = argparse.ArgumentParser()
    add_model_flags(p, SamplingParams, skip=("n", "logit_bias"))
    flags = {s for a in p._actions for s in a.option_strings}
    assert "--n" not in flags and "--logit-bias" not in flags
    assert "--temperature" in flags


def test_sampling_flags_types():
    p = argparse.ArgumentParser()
    add_model_flags(p, SamplingParams, skip=("logit_bias",))
    ns = p.parse_args(["--temperature", "0.5", "--max-tokens", "12", "--stop", "a",
                       "--stop", "\n\n", "--ignore-eos"])
    g = given(ns, SamplingParams)
    assert g == {"temperature": 0.5, "max_tokens": 12, "stop": ["a", "\n\n"],
                 "ignore_eos": True}
    assert SamplingParams(**g).stop == ["a", "\n\n"]
    ns = p.parse_args(["--no-ignore-eos"])
    assert given(ns, SamplingParams) == {"ignore_eos": False}


def test_flags_feed_settings_with_top_precedence(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.upper().startswith("GEMMAKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GEMMAKIT_PORT", "9001")
    monkeypatch.setenv("GEMMAKIT_CONTEXT_LENGTH", "1024")
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = 9002\n")
    ns = settings_parser().parse_args(["--context-length", "2048"])
    s = Settings.load(cfg, **given(ns, Settings))
    assert s.context_length == 2048  # flag beats environment
    assert s.port == 9002            # not given on the command line: the file's value


def test_real_cli_parser_serve_flags():
    from gemmakit.cli.main import build_parser

    ns = build_parser().parse_args(["serve", "--context-length", "2048", "--log-level", "debug"])
    assert ns.command == "serve"
    assert given(ns, Settings) == {"context_length": 2048, "log_level": "debug"}
    ns = build_parser().parse_args(["chat", "hello", "--temperature", "0"])
    assert given(ns, SamplingParams) == {"temperature": 0.0}
    assert "port" not in vars(ns)  # chat has engine flags only
