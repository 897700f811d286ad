"""The bytes each token of a Hugging Face (SentencePiece) tokenizer stands for, as the llama.cpp
engine's `token_piece` gives them: byte-fallback pieces ("<0x0A>") as their byte, "▁" as a space,
control tokens as nothing (llama.cpp's token_to_piece without `special`). Shared by the engines
that tokenize with a Hugging Face tokenizer (transformers, vLLM), so their text is the same."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenPieces:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.control = frozenset(i for i, t in tokenizer.added_tokens_decoder.items()
                                 if t.special)
        self._cache: dict[int, bytes] = {}

    def piece(self, token: int) -> bytes:
        """The bytes `token` stands for (control tokens render as nothing)."""
        piece = self._cache.get(token)
        if piece is None:
            if token in self.control:
                piece = b""
            else:
                s = self.tokenizer.convert_ids_to_tokens(token) or ""
                m = _BYTE_PIECE.fullmatch(s)
                piece = bytes([int(m.group(1), 16)]) if m else s.replace("\u2581", " ").encode()
            self._cache[token] = piece
        return piece

    def text(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")
