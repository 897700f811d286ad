"""gemmakit: run Google's Gemma models for real — server, CLI and Python toolkit.

Importing gemmakit imports neither torch nor llama_cpp: engines load on demand.
"""

__version__ = "0.1.0"
