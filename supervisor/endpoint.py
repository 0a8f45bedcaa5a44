"""Where the control channel listens, and the token that guards TCP.

``endpoint`` in ``[circus]`` takes Circus's forms: ``ipc:///path/to.sock``
(also ``unix://``) or ``tcp://HOST:PORT``. Without one, juggler listens on
a UNIX socket in the user's private runtime directory:
``$XDG_RUNTIME_DIR/juggler/juggler.sock``, or ``/tmp/juggler-UID/`` when
that variable is unset.

Nearly every Circus config says ``endpoint = tcp://127.0.0.1:5555`` and no
token: Circus let anyone on the host drive it. juggler runs such a config,
but only with a token: it reads ``token_file`` if the config names one
(refusing a file others can read), or generates one into the runtime
directory, where the CLI of the same user finds it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

from juggler.supervisor.errors import SupervisorError

DEFAULT_SOCKET_NAME = "juggler.sock"


@dataclass(frozen=True)
class Endpoint:
    """A parsed control endpoint."""

    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        return f"tcp://{self.host}:{self.port}"


def runtime_dir() -> str:
    """The user's private directory for juggler's sockets and tokens."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "juggler")
    return f"/tmp/juggler-{os.getuid()}"


def parse(text: str | None) -> Endpoint:
    """An ``endpoint`` value (None: the default UNIX socket)."""
    if not text:
        return Endpoint("unix", path=os.path.join(runtime_dir(), DEFAULT_SOCKET_NAME))
    parts = urlsplit(text)
    if parts.scheme in ("ipc", "unix"):
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise SupervisorError(f"endpoint {text!r} names no socket path")
        return Endpoint("unix", path=os.path.abspath(path))
    if parts.scheme == "tcp":
        if parts.hostname is None or parts.port is None:
            raise SupervisorError(f"endpoint {text!r}: expected tcp://HOST:PORT")
        return Endpoint("tcp", host=parts.hostname, port=parts.port)
    raise SupervisorError(
        f"endpoint {text!r}: expected ipc:///path, unix:///path or tcp://HOST:PORT"
    )


def for_client(text: str | None) -> Endpoint:
    """Where the CLI connects: ``text`` if given, else the default socket.

    With no default socket, a juggler of this user that listens on TCP
    (most Circus configs name tcp://127.0.0.1:5555) is found by the token it
    generated in the runtime directory: when there is exactly one, its name
    says the address, and no --endpoint is needed.
    """
    default = parse(text)
    if text or os.path.exists(default.path):
        return default
    found = sorted(glob.glob(os.path.join(runtime_dir(), "tcp-*-*.token")))
    if len(found) != 1:
        return default
    host, _, port = os.path.basename(found[0])[4:-6].rpartition("-")
    if not port.isdigit():
        return default
    return Endpoint("tcp", host=host, port=int(port))


def is_live(path: str) -> bool:
    """Whether a server answers on the UNIX socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def check_private_dir(directory: str, *, search_ok: bool = False) -> None:
    """Refuse a directory that others can enter or that is not ours.

    ``search_ok``: others may pass through it (mode 0711), no more.
    """
    info = os.stat(directory)
    loose = info.st_mode & (0o066 if search_ok else 0o077)
    if info.st_uid != os.getuid() or loose:
        wanted = "0700 or 0711" if search_ok else "0700"
        raise PermissionError(
            f"directory {directory} must be owned by uid {os.getuid()} and mode "
            f"{wanted} (it is uid {info.st_uid}, mode {info.st_mode & 0o777:o}); "
            + _private_dir_advice(directory, info)
        )


def _private_dir_advice(directory: str, info: os.stat_result) -> str:
    """What to do: chmod a directory of one's own, never one that others
    share (a sticky directory like /tmp, even when root owns it)."""
    if info.st_uid == os.getuid() and not info.st_mode & stat.S_ISVTX:
        return f"chmod 700 {directory}"
    return (
        "put the socket in a directory of its own, such as "
        f"unix://{runtime_dir()}/{DEFAULT_SOCKET_NAME}"
    )


def token_path(endpoint: Endpoint) -> str:
    """Where the generated token of a TCP endpoint is kept."""
    return os.path.join(runtime_dir(), f"tcp-{endpoint.host}-{endpoint.port}.token")


def read_token(path: str) -> str:
    """Read a token file, refusing one that is not ours or that others can
    read or write (checked on the open file, so that it cannot be swapped
    between the check and the read)."""
    try:
        with open(path) as f:
            _check_token_file(path, os.fstat(f.fileno()))
            token = f.read().strip()
    except OSError as exc:
        raise SupervisorError(
            f"cannot read token file {path}: {exc.strerror}"
        ) from None
    if len(token) < 16:
        raise SupervisorError(f"token in {path} is shorter than 16 characters")
    return token


def _check_token_file(path: str, info: os.stat_result) -> None:
    if info.st_uid != os.getuid():
        raise SupervisorError(
            f"token file {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}); only its owner may use it"
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SupervisorError(
            f"token file {path} is mode {info.st_mode & 0o777:o}; others must "
            f"not read it (chmod 600 {path})"
        )


def generate_token(endpoint: Endpoint) -> str:
    """Make a fresh token for ``endpoint``, readable by this user only, in
    the private runtime directory (refused if it is not private)."""
    directory = runtime_dir()
    path = token_path(endpoint)
    token = secrets.token_urlsafe(32)
    tmp = f"{path}.{os.getpid()}"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_private_dir(directory)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise SupervisorError(
            f"cannot write the token for {endpoint}: {exc.strerror or exc}"
        ) from None
    return token


def remove_token(path: str) -> None:
    """Remove a generated token file at shutdown (if it is still there)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
