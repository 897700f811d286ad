"""gemmakit: run Google's Gemma models for real — server, CLI and Python toolkit.

Importing gemmakit imports neither torch nor llama_cpp: engines load on demand.
"""

__version__ = "0.1.0"


def load(model: str = "gemma-3-270m", **kwargs):  # noqa: ANN201 - documented in gemmakit.api
    """Load a model for in-process use: see `gemmakit.api.load` (imports the engine lazily)."""
    from gemmakit.api import load as _load

    return _load(model, **kwargs)
