"""The local vocabulary the gateway tokenizes with: the GGUF's tokenizer loaded by llama.cpp with
`vocab_only` (no weights in memory: ~0.7 s and a few MB for Gemma's 262k tokens)."""

from __future__ import annotations

import ctypes
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
        from gemmakit.engines.llamacpp import _lib

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
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # pragma: no cover - n_max is always enough for SentencePiece
            buf = (self._ll.llama_token * -n)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, -n, False, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        p = self._pieces.get(token)
        if p is None:
            n = self._ll.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0,
                                              False)
            p = self._buf.raw[:n] if n > 0 else b""
            self._pieces[token] = p
        return p

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def close(self) -> None:
        if self._model:
            self._ll.llama_model_free(self._model)
            self._model = None
