"""The ``myprogram.py`` of Circus's documented example config, made real.

``python -u myprogram.py WID VAR FD``: prints one line with its wid, its
second argument and $CAKE, then answers every HTTP request on the listening
socket FD with ``myprogram WID``, and prints a line for each.
"""

import contextlib
import os
import select
import socket
import sys
import time

wid, var, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(f"myprogram wid={wid} var={var} cake={os.environ.get('CAKE')}")
listener = socket.socket(fileno=fd)


def answer(conn: socket.socket) -> None:
    conn.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    body = f"myprogram {wid}\n".encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    print(f"myprogram wid={wid} served {head.split()[1].decode()}")


deadline = time.monotonic() + 120  # never outlive a broken test by much
while time.monotonic() < deadline:
    # The socket is shared by every process (and non-blocking): another
    # one may take the connection first.
    if not select.select([listener], [], [], 1.0)[0]:
        continue
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        continue
    with conn, contextlib.suppress(OSError):
        answer(conn)
