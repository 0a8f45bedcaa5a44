"""Parsing an answer head for the pid that served it; percentiles."""

import pytest

from bench import management, probe


def test_parse_head_reads_status_and_pid():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nx-pid: 4312\r\n\r\nHello"
    assert probe.parse_head(head) == (200, 4312)


def test_parse_head_without_pid():
    assert probe.parse_head(b"HTTP/1.1 502 Bad Gateway\r\n\r\n") == (502, None)


def test_parse_head_rejects_garbage():
    with pytest.raises(OSError, match="not an HTTP answer"):
        probe.parse_head(b"")


def test_percentile_interpolates():
    assert management.percentile([1, 2, 3, 4, 5], 50) == 3
    assert management.percentile([10.0], 95) == 10.0
    assert management.percentile([0, 100], 95) == pytest.approx(95.0)


def test_summarise_empty_has_no_figures():
    assert management.summarise([]) == {
        "samples_ms": [],
        "median_ms": None,
        "p95_ms": None,
    }
