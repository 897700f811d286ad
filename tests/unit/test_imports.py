"""`import gemmakit` (and the server and CLI modules) never imports an engine's heavy library."""

from __future__ import annotations

import subprocess
import sys


def test_no_heavy_imports():
    code = ("import sys, gemmakit, gemmakit.server.app, gemmakit.cli.main, gemmakit.service; "
            "heavy = sorted(m for m in ('llama_cpp', 'torch', 'transformers') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
