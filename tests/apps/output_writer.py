"""A child whose output the supervisor's streams capture (test_output).

    output_writer.py lines N [WIDTH]   N numbered lines, then idle
    output_writer.py ticker DIR        a line every 20 ms until DIR/stop
    output_writer.py flood DIR         waits for DIR/go, writes ~50 MiB
                                       with a 10 MiB line, then DIR/done
    output_writer.py both              one line on stdout, one on stderr

After its output a child idles (until a stop signal), so the watcher does
not respawn it and write the same lines again.
"""

import os
import sys
import time

DEADLINE = time.monotonic() + 120  # never outlive a broken test by much


def idle() -> None:
    while time.monotonic() < DEADLINE:
        time.sleep(0.05)


def wait_file(path: str) -> None:
    while not os.path.exists(path) and time.monotonic() < DEADLINE:
        time.sleep(0.01)


def lines(count: int, width: int) -> None:
    out = sys.stdout.buffer
    for n in range(count):
        out.write(f"{os.getpid()} line {n:05d} ".ljust(width, "x").encode() + b"\n")
    out.flush()


def ticker(folder: str) -> None:
    n = 0
    while not os.path.exists(os.path.join(folder, "stop")):
        print(f"tick {n:05d}", flush=True)
        n += 1
        time.sleep(0.02)
    print("last", flush=True)


def flood(folder: str) -> None:
    wait_file(os.path.join(folder, "go"))
    out = sys.stdout.buffer
    block = b"".join(b"short line %06d\n" % n for n in range(4096))
    for _ in range(20 * 1024 * 1024 // len(block)):
        out.write(block)
    out.write(b"L" * (10 * 1024 * 1024) + b"\n")
    for _ in range(20 * 1024 * 1024 // len(block)):
        out.write(block)
    out.write(b"the end\n")
    out.flush()
    with open(os.path.join(folder, "done"), "w") as f:
        f.write("done")


def main() -> None:
    mode = sys.argv[1]
    if mode == "lines":
        width = int(sys.argv[3]) if len(sys.argv) > 3 else 0
        lines(int(sys.argv[2]), width)
    elif mode == "ticker":
        ticker(sys.argv[2])
    elif mode == "flood":
        flood(sys.argv[2])
    elif mode == "both":
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
    idle()


main()
