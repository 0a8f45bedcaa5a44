"""A real nginx in front of every configuration, with a generated config.

``worker_processes 1``: the machine's cores are shared by wrk (two threads),
nginx and the app workers. One nginx worker proxies far more than any
Python worker here serves, and it keeps the same number of processes
competing for the cores in every row; ``auto`` would add nginx workers that
take CPU from the app workers and blur the comparison. The ceiling row
uses the same single worker, so it is the ceiling of *this* nginx set-up.

The upstream keeps 32 idle connections open (``keepalive 32``) and speaks
HTTP/1.1 with an empty Connection header: the set-up the README
recommends, and the one under which keep-alive in the workers matters.
The buffers are raised so that a 64 KiB answer and a 16 KiB request body
stay in memory: with the defaults nginx spills them to temporary files and
the benchmark would measure the disk.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from bench.children import stop_tree

CONF = """\
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
    client_body_buffer_size 32k;
    proxy_buffer_size 16k;
    proxy_buffers 8 16k;
{upstream_block}
    server {{
        listen 127.0.0.1:{port};
        location / {{
{location}
        }}
    }}
}}
"""

UPSTREAM = """\
    upstream app {{
        server {upstream};
        keepalive 32;
    }}"""

PROXY = """\
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""

# The same 13 bytes the apps answer.
CEILING = """\
            default_type text/plain;
            return 200 "Hello, world!";"""


def render(tmp: str, port: int, upstream: str | None) -> str:
    """nginx.conf proxying to ``upstream`` (``unix:PATH`` or ``HOST:PORT``),
    or answering by itself when ``upstream`` is None (the ceiling)."""
    # As root, nginx's workers would otherwise run as nobody and could not
    # connect to a UNIX socket of mode 0660.
    user = "user root;" if os.getuid() == 0 else ""
    block = UPSTREAM.format(upstream=upstream) if upstream else ""
    location = PROXY if upstream else CEILING
    return CONF.format(
        tmp=tmp, port=port, user=user, upstream_block=block, location=location
    )


def free_port() -> int:
    """A port the kernel just handed out (bind port 0, then let it go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NginxError(Exception):
    """nginx did not start; the message has its error log."""


class Nginx:
    """nginx in the foreground, in its own session, stopped by pid."""

    def __init__(self, binary: str, tmp: str, upstream: str | None) -> None:
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.conf = os.path.join(tmp, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(render(tmp, self.port, upstream))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [self.binary, "-c", self.conf, "-p", self.tmp]

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if time.monotonic() > deadline:
                raise NginxError(f"nginx not listening after {timeout:g}s")
            time.sleep(0.01)

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise NginxError(f"nginx exited {self.proc.returncode}: {self.errors()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def errors(self) -> str:
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc)
            self.proc = None
