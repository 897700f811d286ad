"""--upstream / --upstream-key / [[upstreams]] into the remote engine's upstreams."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemmakit.engines.remote import upstreams_from_settings
from gemmakit.errors import ConfigError
from gemmakit.settings import Settings


def test_flags_and_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('engine = "remote"\nrouting = "weighted"\n'
                   '[[upstreams]]\nurl = "http://gpu-1:8000/v1"\nkind = "vllm"\nkey = "sk-v"\n'
                   'weight = 4\nmodel = "google/gemma-3-27b-it"\n'
                   '[[upstreams]]\nurl = "http://cpu-1:8000"\nname = "cpu-1"\n')
    s = Settings.load(cfg, upstream=["http://a:1", "http://b:2/"], upstream_key=["k"],
                      upstream_failures=7)
    ups = upstreams_from_settings(s)
    assert [u.name for u in ups] == ["gpu-1:8000", "cpu-1", "a:1", "b:2"]
    assert (ups[0].kind, ups[0].key, ups[0].weight, ups[0].model) == (
        "vllm", "sk-v", 4.0, "google/gemma-3-27b-it")
    assert ups[1].kind is None and ups[1].key is None  # detected later
    assert [u.key for u in ups[2:]] == ["k", "k"]  # one key for every --upstream
    assert all(u.breaker.threshold == 7 for u in ups)
    s = Settings.load(upstream=["http://a:1", "http://b:2"], upstream_key=["k1", "k2"])
    assert [u.key for u in upstreams_from_settings(s)] == ["k1", "k2"]


@pytest.mark.parametrize("flags, message", [
    ({}, "needs upstreams"),
    ({"upstream": ["http://a:1", "http://b:2", "http://c:3"], "upstream_key": ["x", "y"]},
     "one key for all"),
    ({"upstream": ["a:1"]}, "http:// or https://"),
    ({"upstream": ["http://a:1", "http://a:1/v1"]}, "named twice"),
])
def test_refused(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        upstreams_from_settings(Settings.load(**flags))


def test_a_bad_table_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[[upstreams]]\nurl = "ftp://x"\nweight = 0\n')
    with pytest.raises(ConfigError, match="upstreams"):
        Settings.load(cfg)


def test_serve_has_the_flags_not_the_tables() -> None:
    import argparse

    from gemmakit.cli import serve

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    ns = p.parse_args(["--upstream", "http://a:1", "--upstream", "http://b:2",
                       "--routing", "prefix", "--upstream-idle-timeout", "3"])
    assert ns.upstream == ["http://a:1", "http://b:2"] and ns.routing == "prefix"
    with pytest.raises(SystemExit):
        p.parse_args(["--upstreams", "x"])
