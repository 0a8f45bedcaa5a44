"""Reading one INI value as the kind its option declares.

Each reader takes the text and returns the value, or raises ``ValueError``
whose message says what was expected; the caller adds ``FILE:LINE:
[section] key:`` in front.
"""

from __future__ import annotations

import math
import re
import resource
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "no", "false", "off"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
READY_MODES = ("notify", "warmup", "none")
FAMILIES = {
    "AF_INET": socket.AF_INET,
    "AF_INET6": socket.AF_INET6,
    "AF_UNIX": socket.AF_UNIX,
}
SOCKET_TYPES = {
    "SOCK_STREAM": socket.SOCK_STREAM,
    "SOCK_DGRAM": socket.SOCK_DGRAM,
    "SOCK_RAW": socket.SOCK_RAW,
    "SOCK_RDM": socket.SOCK_RDM,
    "SOCK_SEQPACKET": socket.SOCK_SEQPACKET,
}
UNLIMITED_WORDS = frozenset({"", "unlimited", "infinity"})
# (uid_t)-1 and (gid_t)-1: to setresuid() and setresgid(), "no change".
UNCHANGED_ID = 2**32 - 1


def to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(
        f"expected a boolean (true/false, yes/no, on/off, 1/0), got {text!r}"
    )


def to_int(text: str) -> int:
    """An integer; ``5.0`` is accepted as 5, ``5.5`` is not."""
    try:
        return int(text.strip())
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if not number.is_integer():
        raise ValueError(f"expected an integer, got {text!r}")
    return int(number)


def to_count(text: str) -> int:
    value = to_int(text)
    if value < 0:
        raise ValueError(f"expected 0 or more, got {text!r}")
    return value


def to_duration(text: str) -> float:
    """Seconds, as Circus wrote them: ``30``, ``25.5``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"expected 0 or more seconds, got {text!r}")
    return value


def to_port(text: str) -> int:
    value = to_int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def to_octal(text: str) -> int:
    """A umask or mode, always octal: ``022``, ``0o022`` and ``22`` agree."""
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise ValueError(f"expected an octal number such as 022, got {text!r}")
    return int(digits, 8)


def to_signal(text: str) -> int:
    """``15``, ``TERM``, ``sigterm``, ``SIGRTMIN+1`` -- as Circus took them."""
    word = text.strip()
    if re.fullmatch(r"\d+", word):
        number = int(word)
    else:
        match = re.fullmatch(r"(\w+?)(?:\+(\d+))?", word)
        name = match[1].upper() if match else ""
        name = name if name.startswith("SIG") else "SIG" + name
        base = getattr(signal, name, None)
        if match is None or not isinstance(base, int):
            raise ValueError(f"expected a signal name or number, got {text!r}")
        number = base + int(match[2] or 0)
    if number not in signal.valid_signals():
        raise ValueError(f"{text!r} is not a signal on this system")
    return number


def _choice(table: Mapping[str, int], what: str) -> Callable[[str], int]:
    def read(text: str) -> int:
        value = table.get(text.strip().upper())
        if value is None:
            raise ValueError(f"expected {what} ({', '.join(table)}), got {text!r}")
        return value

    return read


def _word(words: tuple[str, ...]) -> Callable[[str], str]:
    def read(text: str) -> str:
        word = text.strip().lower()
        if word not in words:
            raise ValueError(f"expected one of {', '.join(words)}, got {text!r}")
        return word

    return read


def to_rlimit(name: str, text: str) -> int:
    """``rlimit_nofile = 500`` -> 500, after checking that RLIMIT_NOFILE
    exists; an empty value (or ``unlimited``) is ``RLIM_INFINITY``."""
    number = getattr(resource, "RLIMIT_" + name.upper(), None)
    if not isinstance(number, int):
        raise ValueError(f"no resource limit RLIMIT_{name.upper()} on this system")
    if text.strip().lower() in UNLIMITED_WORDS:
        return resource.RLIM_INFINITY
    value = to_int(text)
    if value < 0:
        raise ValueError(f"expected a limit of 0 or more, got {text!r}")
    return value


def _text(text: str) -> str:
    return text


READERS: dict[str, Callable[[str], Any]] = {
    "str": _text,
    "bool": to_bool,
    "int": to_int,
    "count": to_count,
    "duration": to_duration,
    "port": to_port,
    "octal": to_octal,
    "signal": to_signal,
    "family": _choice(FAMILIES, "an address family"),
    "socktype": _choice(SOCKET_TYPES, "a socket type"),
    "loglevel": _word(LOG_LEVELS),
    "ready": _word(READY_MODES),
}
