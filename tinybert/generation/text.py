"""Text side of generation: stop strings and incremental decoding; knows nothing of models."""

from __future__ import annotations


class StopMatcher:
    """Finds the earliest stop string in generated text."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop

    def cut(self, text: str) -> int | None:
        """Index where the first stop string starts in ``text``, or None."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def holdback(self, text: str) -> int:
        """How many trailing characters could still become a stop string (not yet safe to stream)."""
        keep = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-n:]):
                    keep = max(keep, n)
                    break
        return keep


class IncrementalDecoder:
    """ids → text pieces. Byte-level BPE splits multi-byte characters across tokens; a piece is
    released only once the decoded text no longer ends in an incomplete character (U+FFFD)."""

    def __init__(self, decode) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        """Add a token; return the newly completed text (may be empty)."""
        self.ids.append(int(token))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece
