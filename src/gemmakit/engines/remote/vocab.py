"""The local vocabulary the gateway tokenizes with: the GGUF's tokenizer loaded by llama.cpp with
`vocab_only` (no weights in memory: ~0.7 s and a few MB for Gemma's 262k tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gemmakit.errors import ConfigError


class Vocab(Protocol):
    n_vocab: int
    eog_ids: frozenset[int]

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    def piece(self, token: int) -> bytes: ...


class GgufVocab:
    def __init__(self, path: str | Path) -> None:
        from gemmakit.engines.llamacpp import VocabText, _lib

        ll = _lib()
        self._ll = ll
        params = ll.llama_model_default_params()
        params.vocab_only = True
        self._model = ll.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ConfigError(f"llama.cpp could not read the vocabulary of {Path(path).name}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.eog_ids = frozenset(t for t in range(self.n_vocab)
                                 if ll.llama_vocab_is_eog(self._vocab, t))
        self._text = VocabText(ll, self._vocab)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._text.tokenize(text, special=special)

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        return self._text.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def close(self) -> None:
        if self._model:
            self._ll.llama_model_free(self._model)
            self._model = None
