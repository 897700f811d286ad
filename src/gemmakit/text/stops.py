"""Stop-sequence matching over a text stream.

A stop string may span several tokens ("<|" + "END" + "|>"), so the matcher holds back exactly the
longest tail of the text seen so far that could still become a stop string, and never emits any
part of a stop string that matched.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add text; return what is safe to emit. After a match, `matched` is set and the rest of
        the stream must be discarded by the caller."""
        if self.matched is not None:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        # The stop that *completes* first wins (what a token-by-token stream sees), so the result
        # does not depend on how the text was split; on a tie, the one that starts earlier.
        best, hit_at, hit = None, 0, None
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1 and (best is None or (i + len(stop), i) < best):
                best, hit_at, hit = (i + len(stop), i), i, stop
        if hit is not None:
            self._held = ""
            self.matched = hit
            return buf[:hit_at]
        hold = self._partial_tail(buf)
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """End of stream without a match: the held-back tail is ordinary text after all."""
        out, self._held = self._held, ""
        return "" if self.matched is not None else out

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best
