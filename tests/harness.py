"""Real processes and real sockets for the tests, cleaned up by pid.

``RunnerProcess`` binds a listening socket (TCP on port 0, or a UNIX path),
starts a real ``runner`` child with that socket passed as a descriptor, and
waits for the runner's own ``READY=1`` on a NOTIFY_SOCKET the test owns:
no fixed ports, no sleeps. Every child starts in its own session; ``stop``
signals the whole process group and escalates to SIGKILL after a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
REPO_DIR = TESTS_DIR.parent

DEFAULT_DEADLINE = 20.0


def runner_command() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = Path(sys.executable).with_name("runner")
    if script.exists():
        return [str(script)]
    found = shutil.which("runner")
    return [found] if found else [sys.executable, "-m", "juggler.runner"]


def wait_for(
    condition: Callable[[], object],
    timeout: float = DEFAULT_DEADLINE,
    interval: float = 0.01,
    message: str = "condition",
) -> object:
    """Poll ``condition`` until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


def bind_tcp(host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def bind_unix(path: str, backlog: int = 128) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    return sock


class NotifyListener:
    """The receiving end of the sd_notify protocol, as a supervisor has it."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = DEFAULT_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not any(line in message.splitlines() for message in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {line} within {timeout}s: {self.messages}")
            self.sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


class RunnerProcess:
    """A ``runner serve --fd N`` child serving on a socket the test bound."""

    def __init__(
        self,
        app: str,
        *,
        backend: str | None = None,
        family: str = "tcp",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.backend = backend
        self.family = family
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.tmpdir = tempfile.mkdtemp(prefix="juggler-test-")
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify = NotifyListener(self.tmpdir)
        self.log_path = os.path.join(self.tmpdir, "runner.log")

    # -- where clients connect -------------------------------------------
    @property
    def address(self) -> tuple[str, int] | str:
        assert self.sock is not None
        name = self.sock.getsockname()
        return name if self.family == "unix" else (name[0], name[1])

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A fresh client connection to the served socket."""
        assert self.sock is not None
        client = socket.socket(self.sock.family, socket.SOCK_STREAM)
        client.settimeout(timeout)
        client.connect(self.address)
        return client

    # -- lifecycle --------------------------------------------------------
    def command(self, fd: int) -> list[str]:
        args = [*runner_command(), "serve", "--fd", str(fd)]
        if self.backend:
            args += ["--backend", self.backend]
        args += ["--python-path", str(APPS_DIR), *self.extra_args, self.app]
        return args

    def start(self, wait_ready: bool = True, timeout: float = DEFAULT_DEADLINE) -> None:
        if self.family == "unix":
            self.sock = bind_unix(os.path.join(self.tmpdir, "web.sock"))
        else:
            self.sock = bind_tcp("::1" if self.family == "tcp6" else "127.0.0.1")
        fd = self.sock.fileno()
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(fd),
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = DEFAULT_DEADLINE) -> None:
        try:
            self.notify.wait_for("READY=1", timeout)
        except TimeoutError:
            raise AssertionError(
                f"runner did not become ready; exit={self.poll()} log:\n{self.log()}"
            ) from None

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = DEFAULT_DEADLINE) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group; SIGKILL it if still alive after timeout."""
        code = None
        if self.proc is not None:
            code = stop_group(self.proc, timeout)
        if self.sock is not None:
            self.sock.close()
        self.notify.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return code

    def __enter__(self) -> RunnerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop a child started with start_new_session, and all it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout)
    # Grandchildren the app left behind share the group; make sure of them.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return code


@contextlib.contextmanager
def running(app: str, **kwargs: object) -> Iterator[RunnerProcess]:
    """``with running("hello:app", backend="gevent") as runner: ...``"""
    proc = RunnerProcess(app, **kwargs)  # type: ignore[arg-type]
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def run_cli(
    args: Sequence[str], timeout: float = DEFAULT_DEADLINE, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run the runner CLI to completion (for its error paths)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*runner_command(), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.pop("cwd", APPS_DIR),
        **kwargs,
    )


def juggler_command() -> list[str]:
    script = Path(sys.executable).with_name("juggler")
    if script.exists():
        return [str(script)]
    found = shutil.which("juggler")
    return [found] if found else [sys.executable, "-m", "juggler.supervisor.cli"]


class SupervisorProcess:
    """A real ``juggler CONFIG`` in its own session, its log in a file.

    The config text may use ``{tmp}`` (a private folder for socket paths and
    marker files), ``{apps}`` (tests/apps) and ``{python}`` (this
    interpreter); the environment's PATH leads to this venv's ``runner``.
    """

    def __init__(
        self,
        config: str,
        *,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tempfile.mkdtemp(prefix="juggler-sup-")
        self.config_path = os.path.join(self.tmp, "juggler.ini")
        with open(self.config_path, "w") as f:
            f.write(self.render(config))
        self.log_path = os.path.join(self.tmp, "juggler.log")
        self.extra_args = list(extra_args)
        # A private control socket, so that tests never meet each other's
        # supervisors (or a developer's own) on the default endpoint.
        self.endpoint = f"unix://{self.tmp}/control.sock"
        self.env = {"JUGGLER_ENDPOINT": self.endpoint, **(env or {})}
        self.cwd: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def render(self, text: str) -> str:
        return text.format(tmp=self.tmp, apps=APPS_DIR, python=sys.executable)

    def write_config(self, config: str) -> None:
        with open(self.config_path, "w") as f:
            f.write(self.render(config))

    def start(
        self, wait: str | None = "started:", timeout: float = DEFAULT_DEADLINE
    ) -> None:
        bindir = str(Path(sys.executable).parent)
        path = f"{bindir}:{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*juggler_command(), *self.extra_args, self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd or self.tmp,
                start_new_session=True,
            )
        if wait:
            self.wait_log(wait, timeout=timeout)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(
        self, text: str, count: int = 1, timeout: float = DEFAULT_DEADLINE
    ) -> str:
        """Wait until ``text`` appears ``count`` times in the log."""

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(
                    f"juggler exited {code} before {text!r}:\n{self.log()}"
                )
            return self.log().count(text) >= count

        try:
            wait_for(seen, timeout=timeout, message=repr(text))
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} x{count} in log:\n{self.log()}"
            ) from None
        return self.log()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, object]:
        """``status`` over the control socket itself (no CLI process)."""
        import json

        path = self.endpoint.removeprefix("unix://")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(DEFAULT_DEADLINE)
            client.connect(path)
            client.sendall(b'{"command": "status"}\n')
            reply = json.loads(client.makefile("rb").readline())
        assert reply["ok"], reply
        return reply["result"]  # type: ignore[no-any-return]

    def serving(self, watcher: str | None = None) -> list[int]:
        """Pids of the processes that serve: spares left out."""
        pids = [
            process["pid"]
            for name, state in self.status().items()
            if watcher in (None, name)
            for process in state["processes"]  # type: ignore[attr-defined]
            if not process["spare"]
        ]
        return sorted(pids)

    def ctl(
        self, *args: str, timeout: float = DEFAULT_DEADLINE
    ) -> subprocess.CompletedProcess[str]:
        """Run ``juggler COMMAND ...`` against this supervisor."""
        return subprocess.run(
            [*juggler_command(), "--endpoint", self.endpoint, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ctl_json(self, *args: str) -> object:
        """``juggler --json COMMAND ...``; fails the test on a non-zero exit."""
        import json

        done = self.ctl("--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def children(self) -> list[int]:
        """Pids of the supervisor's direct children."""
        import psutil

        return sorted(p.pid for p in psutil.Process(self.pid).children())

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = DEFAULT_DEADLINE) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        code = None
        if self.proc is not None:
            code = stop_group(self.proc, timeout)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code


def http_get(
    address: str | tuple[str, int], path: str = "/", timeout: float = 10.0
) -> tuple[int, bytes]:
    """One GET on a fresh connection to a UNIX path or (host, port)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(address)
        client.sendall(
            f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body
