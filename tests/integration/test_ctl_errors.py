"""The CLI's failures of the channel itself: one line, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

from harness import juggler_command, stop_group, wait_for

STUBBORN = """
[watcher:stubborn]
cmd = {python} {apps}/stubborn.py
graceful_timeout = 10
ready = none
"""

# 100 KB of arguments: the reply to ``options`` exceeds the 64 KiB request cap.
BIG = """
[watcher:big]
cmd = {python} -c pass %s
autostart = false
""" % ("x" * 100_000)


def test_a_reply_timeout_is_one_line(juggler):
    sup = juggler(STUBBORN)
    sup.wait_log("spawned: stubborn[1]")
    wait_for(lambda: "ignoring SIGTERM" in sup.log())
    done = sup.ctl("--timeout", "2", "stop", "stubborn")
    assert done.returncode == 1
    assert done.stderr == (
        "error: timed out after 2s waiting for stop; raise --timeout\n"
    )
    # The daemon goes on with the stop it was asked for.
    assert sup.ctl_json("status", "stubborn")["state"] == "stopping"
    sup.wait_log("killed: stubborn[1]", timeout=20)


def test_long_commands_wait_for_the_daemon_by_default(juggler):
    sup = juggler(STUBBORN.replace("graceful_timeout = 10", "graceful_timeout = 3"))
    sup.wait_log("spawned: stubborn[1]")
    wait_for(lambda: "ignoring SIGTERM" in sup.log())
    # With --timeout 1 this stop fails; without one, it waits the 3 s.
    done = sup.ctl("stop", "stubborn")
    assert done.returncode == 0, done.stderr
    assert "stubborn: stopped" in done.stdout
    assert "killed: stubborn[1]" in sup.log()


def test_a_reply_longer_than_a_request_frame_is_read(juggler):
    sup = juggler(BIG)
    options = sup.ctl_json("options", "big")
    assert len(options["cmd"]) > 100_000 and options["cmd"].endswith("x" * 100)
    human = sup.ctl("get", "big", "cmd")
    assert human.returncode == 0 and len(human.stdout) > 100_000


def test_events_cli_prints_lines_and_ends_with_one_when_juggler_stops(juggler):
    sup = juggler(
        STUBBORN.replace("stubborn.py", "stubborn.py\nstop_signal = KILL"),
        extra_args=["--log-level", "debug"],
    )
    sup.wait_log("spawned: stubborn[1]")
    out_path, err_path = f"{sup.tmp}/events.out", f"{sup.tmp}/events.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        events = subprocess.Popen(
            [*juggler_command(), "--endpoint", sup.endpoint, "events"],
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        sup.wait_log("control: events subscriber")
        victim = sup.serving("stubborn")[0]
        os.kill(victim, signal.SIGKILL)

        def lines() -> str:
            with open(out_path) as f:
                return f.read()

        wait_for(lambda: f" exit watcher=stubborn wid=1 pid={victim} " in lines())
        wait_for(lambda: re.search(r" spawn watcher=stubborn wid=1 pid=\d+", lines()))
        sup.ctl_json("quit")
        assert events.wait(timeout=20) == 1
        with open(err_path) as f:
            stderr = f.read()
        assert stderr.count("\n") == 1 and "closed the connection" in stderr
        assert stderr.startswith("error: ")
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()


def test_events_json_is_one_message_per_line(juggler):
    sup = juggler(
        STUBBORN.replace("stubborn.py", "stubborn.py\nstop_signal = KILL"),
        extra_args=["--log-level", "debug"],
    )
    sup.wait_log("spawned: stubborn[1]")
    out_path = f"{sup.tmp}/events.json"
    with open(out_path, "w") as out:
        events = subprocess.Popen(
            [*juggler_command(), "--endpoint", sup.endpoint, "events", "--json"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        sup.wait_log("control: events subscriber")
        victim = sup.serving("stubborn")[0]
        os.kill(victim, signal.SIGKILL)

        def exits() -> list[dict[str, object]]:
            # As the protocol sends them: {"event": {...}} (or {"dropped": N}).
            with open(out_path) as f:
                messages = [json.loads(line) for line in f if line.endswith("\n")]
            events = [m["event"] for m in messages if "event" in m]
            return [e for e in events if e["topic"] == "exit"]

        wait_for(exits, message="an exit event")
        [event] = exits()
        assert (event["watcher"], event["pid"], event["how"]) == (
            "stubborn",
            victim,
            "signal=SIGKILL",
        )
    finally:
        stop_group(events)
