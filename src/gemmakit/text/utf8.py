"""Incremental UTF-8 decoding of token pieces.

A token is a byte string; one character (a CJK ideograph, an emoji) may span several tokens. The
standard library's incremental decoder holds back an incomplete sequence until the next piece
completes it, so streamed text is always valid UTF-8.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Feed token byte pieces, get back only complete characters."""

    def __init__(self) -> None:
        # errors="replace": bytes that can never form a character (a model can emit them) become
        # U+FFFD instead of failing the whole request.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """End of stream: an incomplete trailing sequence becomes U+FFFD rather than vanishing."""
        return self._decoder.decode(b"", final=True)

    @property
    def pending(self) -> bool:
        return bool(self._decoder.getstate()[0])
