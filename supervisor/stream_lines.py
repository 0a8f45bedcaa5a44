"""A child's output as lines, and the interface every stream class keeps.

A ``LineSplitter`` cuts what the arbiter read from a child's pipe into
``Piece``s: whole lines, or pieces of a line longer than ``MAX_LINE``, cut
as they arrive so that a line is never held whole. juggler's own streams
write them with ``render``, starting each piece after the first with
``CONTINUED``. Bytes pass as the child wrote them: nothing is decoded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LINE = 64 * 1024
# The start of a piece that continues a line cut at MAX_LINE.
CONTINUED = b"[...] "


@dataclass(frozen=True, slots=True)
class Piece:
    """Output of one process: whole lines, or one cut piece of a long line.

    ``data`` ends with ``\\n`` when its last line is whole; without it, the
    line was cut at ``MAX_LINE`` (or the process ended mid-line).
    ``continued``: the first line continues a piece that was cut.
    """

    data: bytes
    continued: bool = False


class LineSplitter:
    """Cuts a byte stream into ``Piece``s, holding at most ``max_line`` bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = b""
        self._continued = False

    def feed(self, data: bytes) -> list[Piece]:
        pieces: list[Piece] = []
        buffer = self._partial + data if self._partial else data
        end = buffer.rfind(b"\n") + 1
        if end:
            self._whole_lines(buffer[:end], pieces)
        rest = buffer[end:]
        while len(rest) > self.max_line:
            pieces.append(Piece(rest[: self.max_line], self._continued))
            self._continued = True
            rest = rest[self.max_line :]
        self._partial = rest
        return pieces

    def flush(self) -> list[Piece]:
        """What is left when the pipe closes: a last line without newline."""
        rest, self._partial = self._partial, b""
        continued, self._continued = self._continued, False
        return [Piece(rest, continued)] if rest else []

    def _whole_lines(self, block: bytes, pieces: list[Piece]) -> None:
        # Fast path: a block no longer than max_line holds no long line.
        if (
            len(block) <= self.max_line
            or max(map(len, block.split(b"\n"))) <= self.max_line
        ):
            pieces.append(Piece(block, self._continued))
            self._continued = False
            return
        for line in block[:-1].split(b"\n"):
            rest = line
            while len(rest) > self.max_line:
                pieces.append(Piece(rest[: self.max_line], self._continued))
                self._continued = True
                rest = rest[self.max_line :]
            pieces.append(Piece(rest + b"\n", self._continued))
            self._continued = False


def render(pieces: Sequence[Piece], prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """Pieces as juggler's streams write them: each line ends with a newline,
    starts with ``prefix`` (and ``CONTINUED`` if it continues a cut one)."""
    out = []
    for piece in pieces:
        body = piece.data[:-1] if piece.data.endswith(b"\n") else piece.data
        if piece.continued:
            body = CONTINUED + body
        if prefix or suffix:
            body = prefix + body.replace(b"\n", suffix + b"\n" + prefix) + suffix
        out.append(body + b"\n")
    return b"".join(out)


def time_prefix(time_format: str | None, pid: int) -> bytes:
    """``2024-05-01 12:00:00 [4312] | `` as Circus wrote it, or nothing."""
    if not time_format:
        return b""
    stamp = time.strftime(time_format)
    return f"{stamp} [{pid}] | ".encode(errors="replace")


class Stream:
    """Where a batch of one process's output goes.

    ``write`` returns how many bytes it dropped (0: all written) and may
    raise ``OSError``; it runs on the arbiter's loop and must not block.
    """

    def write(self, pid: int, pieces: Sequence[Piece]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; a later ``write`` opens it again."""

    async def aclose(self) -> None:
        self.close()
