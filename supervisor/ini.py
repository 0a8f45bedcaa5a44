"""A Circus-compatible INI reader that remembers where every line came from.

Python's configparser forgets line numbers, and Circus replaced its reading
loop anyway; this reader follows Circus's rules so that its files mean the
same thing here:

- blank lines, lines starting with ``#`` or ``;`` in the first column and
  lines starting with ``rem`` are skipped;
- ``key = value`` or ``key: value``; a ``;`` that follows a space starts a
  comment (only the first ``;`` of a value is looked at, as in Circus);
  ``""`` means an empty value; no ``%`` interpolation;
- an indented line continues the previous value (joined with a newline);
- included files are read after the including one, and a section seen
  again in another file is merged into the first: a key already set keeps
  its first value. That is what lets an included file add to ``[circus]``.

Where we are stricter than Circus: a section repeated within one file and a
key repeated within one section of one file are errors (Circus merged them
silently), and keys are case-insensitive except in ``[env...]`` sections,
whose keys are environment variable names.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from juggler.supervisor.errors import Problems, Where
from juggler.supervisor.substitute import SubstitutionError, expand_env

SECTION_RE = re.compile(r"\[(?P<header>.+)\]")
OPTION_RE = re.compile(r"(?P<key>.*?)\s*(?P<sep>[=:])\s*(?P<value>.*)$")
GLOB_CHARS = frozenset("*?[")


@dataclass
class Entry:
    """One ``key = value`` line (plus its continuation lines)."""

    key: str
    value: str
    where: Where


@dataclass
class Section:
    """A ``[name]`` block; merged across files, first values kept."""

    name: str
    where: Where
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``watcher`` for ``[watcher:web]``, ``circus`` for ``[circus]``."""
        return self.name.partition(":")[0].strip().lower()

    @property
    def arg(self) -> str:
        """What follows the colon: ``web`` for ``[watcher:web]``."""
        return self.name.partition(":")[2].strip()

    @property
    def qualified(self) -> bool:
        """Whether the name has a colon (``[env:web]``, even ``[env:]``)."""
        return ":" in self.name

    @property
    def case_sensitive(self) -> bool:
        # Environment variable names are case-sensitive (Circus #730).
        return self.kind == "env"

    def fold(self, key: str) -> str:
        return key if self.case_sensitive else key.lower()

    def get(self, key: str) -> Entry | None:
        return self.entries.get(self.fold(key))

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())


@dataclass
class Document:
    """Every section of a config file and of the files it includes."""

    sections: dict[str, Section] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Section]:
        return [s for s in self.sections.values() if s.kind == kind and s.entries]


def section_key(name: str) -> str:
    """The identity of a section: its kind folded, its argument as written."""
    kind, colon, arg = name.partition(":")
    return kind.strip().lower() + colon + arg.strip()


def read_tree(path: str, problems: Problems, environ: Mapping[str, str]) -> Document:
    """Read ``path`` and, depth first, every file its ``[circus]`` includes."""
    doc = Document()
    _read_into(doc, path, None, problems, environ)
    return doc


def _read_into(
    doc: Document,
    path: str,
    included_by: Where | None,
    problems: Problems,
    environ: Mapping[str, str],
) -> None:
    real = os.path.realpath(path)
    if real in (os.path.realpath(f) for f in doc.files):
        return  # included twice, or a cycle: the first read is enough
    text = _load_text(path, included_by, problems)
    if text is None:
        return
    doc.files.append(path)
    sections = parse(text, path, problems)
    for section in sections:
        _merge(doc, section, problems)
    for where, pattern in _includes(sections, environ, problems):
        for found in _expand_include(pattern, path, where, problems):
            _read_into(doc, found, where, problems, environ)


def _load_text(path: str, included_by: Where | None, problems: Problems) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        if included_by is None:
            problems.fail(f"{path}: cannot read the configuration: {reason}")
        else:
            problems.error(included_by, f"cannot read {path}: {reason}")
        return None


def parse(text: str, path: str, problems: Problems) -> list[Section]:
    """The sections of one file, in order; bad lines are reported."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    last: Entry | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if _is_comment(line):
            continue
        if line[0].isspace() and current is not None and last is not None:
            if line.strip():
                last.value += "\n" + line.strip()
            continue
        header = SECTION_RE.match(line)
        if header:
            current = _open_section(header["header"], path, lineno, sections, problems)
            last = None
        elif current is None:
            problems.error(Where(path, lineno), "a key before any [section]")
        else:
            last = _add_entry(current, line, path, lineno, problems)
    return list(sections.values())


def _is_comment(line: str) -> bool:
    if not line.strip() or line[0] in "#;":
        return True
    return line[0] in "rR" and line.split(None, 1)[0].lower() == "rem"


def _open_section(
    name: str,
    path: str,
    lineno: int,
    sections: dict[str, Section],
    problems: Problems,
) -> Section:
    section = Section(name.strip(), Where(path, lineno, name.strip()))
    key = section_key(name)
    first = sections.get(key)
    if first is not None:
        problems.error(
            section.where,
            f"duplicate section (first at line {first.where.line})",
        )
        return section  # read for its syntax only: it is never registered
    sections[key] = section
    return section


def _add_entry(
    section: Section, line: str, path: str, lineno: int, problems: Problems
) -> Entry | None:
    match = OPTION_RE.match(line)
    where = Where(path, lineno, section.name)
    if match is None or not match["key"].strip():
        problems.error(where, f"expected key = value, got {line.strip()!r}")
        return None
    key = match["key"].strip()
    entry = Entry(
        key, _clean_value(match["value"]), Where(path, lineno, section.name, key)
    )
    first = section.entries.get(section.fold(key))
    if first is not None:
        problems.error(entry.where, f"duplicate key (first at line {first.where.line})")
        return None
    section.entries[section.fold(key)] = entry
    return entry


def _clean_value(value: str) -> str:
    # Circus looks at the first ';' only: it is a comment if a space precedes.
    pos = value.find(";")
    if pos > 0 and value[pos - 1].isspace():
        value = value[:pos]
    value = value.strip()
    return "" if value == '""' else value


def _merge(doc: Document, section: Section, problems: Problems) -> None:
    key = section_key(section.name)
    into = doc.sections.get(key)
    if into is None:
        doc.sections[key] = section
        return
    for folded, entry in section.entries.items():
        kept = into.entries.get(folded)
        if kept is None:
            into.entries[folded] = entry
        else:
            problems.warn(
                entry.where,
                f"ignored: already set at {kept.where.file}:{kept.where.line} "
                "(the first value wins, as in Circus)",
            )


def _includes(
    sections: list[Section], environ: Mapping[str, str], problems: Problems
) -> Iterator[tuple[Where, str]]:
    """``include`` patterns, then ``include_dir`` ones as ``DIR/*.ini``."""
    circus = [s for s in sections if s.kind == "circus"]
    for key, suffix in (("include", None), ("include_dir", "*.ini")):
        entry = circus[0].get(key) if circus else None
        if entry is None:
            continue
        try:
            value = expand_env(entry.value, environ)
        except SubstitutionError as exc:
            problems.error(entry.where, str(exc))
            continue
        for pattern in value.split():
            yield entry.where, os.path.join(pattern, suffix) if suffix else pattern


def _expand_include(
    pattern: str, including: str, where: Where, problems: Problems
) -> list[str]:
    """Files matching ``pattern``, relative to the including file's folder."""
    full = os.path.join(os.path.dirname(including), os.path.expanduser(pattern))
    found = sorted(glob.glob(full))
    if found:
        return found
    if GLOB_CHARS.isdisjoint(pattern):
        # A plain file name that is not there is a mistake, not a pattern
        # that happens to match nothing today.
        problems.error(where, f"cannot read {full}: no such file")
    else:
        problems.warn(where, f"{full} matches no file")
    return []
