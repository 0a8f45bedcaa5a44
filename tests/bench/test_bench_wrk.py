"""wrk's --latency summary, parsed from output captured on this machine
(wrk 4.1.0: nginx's ``return 200``, and nginx answering 502)."""

from pathlib import Path

import pytest

from bench import wrk

HERE = Path(__file__).parent


def sample(name):
    return (HERE / f"wrk_{name}.txt").read_text()


def test_parses_rate_latency_percentiles_and_count():
    result = wrk.parse(sample("ok"))
    assert result.rps == 98293.60
    assert result.p50_ms == pytest.approx(0.428)
    assert result.p99_ms == pytest.approx(3.91)
    assert result.requests == 108132
    assert result.errors == 0


def test_counts_non_2xx_answers_as_errors():
    result = wrk.parse(sample("502"))
    assert result.non2xx == 36160
    assert result.errors == 36160
    assert result.p99_ms == pytest.approx(18.82)


def test_adds_up_socket_errors():
    # wrk prints this line only when a socket error happened.
    text = sample("ok").replace(
        "Requests/sec:",
        "  Socket errors: connect 1, read 2, write 3, timeout 4\nRequests/sec:",
    )
    assert wrk.parse(text).socket_errors == 10


def test_latency_in_seconds():
    text = sample("ok").replace("99%    3.91ms", "99%    1.50s")
    assert wrk.parse(text).p99_ms == pytest.approx(1500.0)


def test_output_without_summary_is_an_error():
    with pytest.raises(wrk.WrkError, match="no wrk summary"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_line():
    assert wrk.command("http://127.0.0.1:1/", 10) == [
        "wrk",
        "-t2",
        "-c64",
        "-d10s",
        "--latency",
        "http://127.0.0.1:1/",
    ]
    # wrk takes whole seconds only.
    with_script = wrk.command("u", 2.4, "/t/post.lua")
    assert with_script[3] == "-d2s"
    assert with_script[5:7] == ["-s", "/t/post.lua"]


def test_post_script_sends_16_kib(tmp_path):
    path = wrk.write_post_script(str(tmp_path))
    text = Path(path).read_text()
    assert 'wrk.method = "POST"' in text
    assert 'string.rep("x", 16384)' in text
