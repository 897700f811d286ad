"""A short LoRA run on the bundled model by the real command: the loss falls on held-out data,
the report, manifest and loss curve are written, the store lists and removes it, and a run
killed after a checkpoint and resumed ends with the very adapter an uninterrupted run makes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.finetune.conftest import DATA, TRAIN_ARGS

REPORT_KEYS = {"steps", "train_loss_first", "train_loss_last", "eval_loss_before",
               "eval_loss_after", "tokens_per_second", "adapter_dir"}


def test_short_run_learns_and_writes_the_adapter(trained: dict[str, Any],
                                                  gemmakit_home: Path) -> None:
    assert REPORT_KEYS <= set(trained)
    assert trained["steps"] == 8 and trained["examples"] == 9 and trained["eval_examples"] == 3
    assert trained["eval_loss_after"] < trained["eval_loss_before"] - 2  # ~9 nats -> a few
    assert trained["train_loss_last"] < trained["train_loss_first"]
    assert trained["tokens_per_second"] > 0
    d = Path(trained["adapter_dir"])
    assert d == gemmakit_home / "adapters" / trained["name"]
    assert (d / "adapter_model.safetensors").is_file() and (d / "adapter_config.json").is_file()
    assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((d / "gemmakit-adapter.json").read_text())
    assert manifest["base"]["model"] == "gemma-3-270m" and len(manifest["base"]["sha256"]) == 64
    assert manifest["data"]["sha256"] and manifest["renderer"]
    hp = manifest["hyperparameters"]
    assert hp["lora_rank"] == 16 and hp["learning_rate"] == 1e-3 and hp["max_steps"] == 8
    assert manifest["metrics"]["eval_loss_after"] == trained["eval_loss_after"]
    assert not (gemmakit_home / "adapters" / f".{trained['name']}.train").exists()


def _cli(home: Path, *args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gemmakit", *args, "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_adapters_list_show_rm(trained: dict[str, Any], gemmakit_home: Path) -> None:
    from gemmakit.cli.main import main

    p = _cli(gemmakit_home, "adapters", "list", "--json")
    rows = json.loads(p.communicate(timeout=60)[0])
    assert trained["name"] in [r["name"] for r in rows]
    p = _cli(gemmakit_home, "adapters", "show", trained["name"])
    assert json.loads(p.communicate(timeout=60)[0])["name"] == trained["name"]
    p = _cli(gemmakit_home, "adapters", "rm", "no-such-adapter")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "no adapter named 'no-such-adapter'" in err
    assert main(["finetune", str(DATA / "capitals.jsonl"), "--name", trained["name"],
                 "--home", str(gemmakit_home)]) == 2  # exists already: refused, not replaced


def test_resume_after_a_crash_equals_the_uninterrupted_run(trained: dict[str, Any],
                                                           gemmakit_home: Path) -> None:
    from safetensors.torch import load_file

    name = trained["name"] + "-resumed"
    args = ["finetune", str(DATA / "capitals.jsonl"), "--name", name, "--eval",
            str(DATA / "capitals_eval.jsonl"), "--json", "--no-progress", *TRAIN_ARGS]
    ckpt = gemmakit_home / "adapters" / f".{name}.train" / "checkpoint" / "state.pt"
    p = _cli(gemmakit_home, *args, start_new_session=True)
    deadline = time.time() + 600
    while not ckpt.exists():
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # a crash: nothing gets to clean up
    p.wait(timeout=30)
    p = _cli(gemmakit_home, *args, "--resume")
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["resumed_at"] == 4 and report["steps"] == 8
    a = load_file(Path(trained["adapter_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(report["adapter_dir"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 18 * 7 * 2  # every projection of every layer
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert report["eval_loss_after"] == trained["eval_loss_after"]
    assert report["train_loss_last"] == trained["train_loss_last"]
    # A second --resume has nothing to continue; a mismatched one is refused.
    p = _cli(gemmakit_home, *args[:-len(TRAIN_ARGS)], "--resume")
    assert "exists already" in p.communicate(timeout=120)[1]
    from gemmakit.finetune import store

    store.remove(gemmakit_home, name)
