"""Markdown cells and tables for the report."""

from __future__ import annotations


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A figure with thousands separators; ``-`` when there is none."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def duration(seconds: float | None, signed: bool = False) -> str:
    """A time per call in the unit that suits it: ns, µs, ms or s."""
    if seconds is None:
        return "-"
    sign = "+" if signed and seconds >= 0 else ""
    size = abs(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if size >= scale:
            return f"{sign}{seconds / scale:,.3g} {unit}"
    return f"{sign}{seconds * 1e9:,.0f} ns"


def cell_error(text: str) -> str:
    """An error on one line that cannot break the table."""
    one_line = " ".join(text.split()).replace("|", "/")
    return f"error: {one_line[:160]}"


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)
