"""gemmakit: run Google's Gemma models for real — server, CLI and Python toolkit.

Importing gemmakit imports neither torch nor llama_cpp: engines load on demand.
"""

__version__ = "0.1.0"

# The Python API, imported on first use (so `import gemmakit` stays light).
_LAZY = {"load": "gemmakit.api", "tool": "gemmakit.tools.schema", "run_tools": "gemmakit.tools.runner",
         "arun_tools": "gemmakit.tools.runner"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gemmakit' has no attribute {name!r}")
