"""A real nginx in front of the workers, as users run them.

``Nginx`` writes a config that proxies 127.0.0.1:PORT to an upstream (a
UNIX socket or a TCP address) with keep-alive to the upstream, HTTP/1.1 and
an empty Connection header -- the set-up the README recommends -- and runs
nginx in the foreground in its own session, stopped by pid.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from harness import stop_group, wait_for

NGINX_CONF = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server {upstream};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed: run .ci/sysdeps (make test does)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx proxying to ``upstream`` (``unix:/path`` or ``host:port``).

    ``keepalive`` idle connections to the upstream are kept for reuse, each
    for ``idle_timeout`` seconds (nginx's default, 60, when None); with 0,
    every request opens a connection of its own to the upstream.
    """

    def __init__(
        self, upstream: str, keepalive: int = 32, idle_timeout: float | None = None
    ) -> None:
        self.tmp = tempfile.mkdtemp(prefix="juggler-nginx-")
        self.upstream = upstream
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = os.path.join(self.tmp, "nginx.conf")
        # As root, nginx's workers would otherwise run as nobody and could
        # not connect to a socket of mode 0660.
        user = "user root;" if os.getuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(
                NGINX_CONF.format(
                    tmp=self.tmp,
                    upstream=self.upstream,
                    port=self.port,
                    user=user,
                    keepalive=self._keepalive_lines(),
                )
            )
        self.proc = subprocess.Popen(
            [nginx_binary(), "-c", conf, "-p", self.tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._accepts, message="nginx listening")

    def _keepalive_lines(self) -> str:
        if not self.keepalive:
            return ""
        lines = f"keepalive {self.keepalive};"
        if self.idle_timeout is not None:
            lines += f" keepalive_timeout {self.idle_timeout:g}s;"
        return lines

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"nginx exited {self.proc.returncode}: {self.errors()}"
            )
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def errors(self) -> str:
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    pids: Counter[str] = field(default_factory=Counter)  # X-Pid of answers

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + sum(
            self.errors.values()
        )


class Load:
    """Keep-alive clients hammering a port from threads until stopped.

    With ``keepalive=False`` each request says ``Connection: close`` and
    goes on a connection of its own. Bounded: it stops by itself after
    ``max_seconds`` whatever happens.
    """

    def __init__(
        self,
        port: int,
        clients: int = 16,
        max_seconds: float = 60,
        *,
        keepalive: bool = True,
    ) -> None:
        self.port = port
        self.keepalive = keepalive
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def connection(self) -> http.client.HTTPConnection:
        """A new client connection (a subclass may aim elsewhere)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _client(self) -> None:
        conn = self.connection()
        headers = {} if self.keepalive else {"Connection": "close"}
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            pid = None
            try:
                conn.request("GET", "/", headers=headers)
                response = conn.getresponse()
                response.read()
                outcome: int | str = response.status
                pid = response.getheader("X-Pid")
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            if not self.keepalive or isinstance(outcome, str):
                conn.close()
                conn = self.connection()
            with self._lock:
                if isinstance(outcome, int):
                    self.result.statuses[outcome] += 1
                else:
                    self.result.errors[outcome] += 1
                if pid is not None:
                    self.result.pids[pid] += 1
        conn.close()
