"""Kernel log text -> `XidEvent`s.

Reads every stamp the corpus shows: `dmesg -T`/`--ctime` (`[Mon Aug  5 03:54:13 2024]`),
raw uptime (`[ 1843.308145]`, no wall time: `time=None`), ISO (`dmesg --time-format iso`,
`journalctl -o short-iso`, with or without the `kern  :warn  : ` prefix of
`dmesg --decode`), syslog style (`Nov 29 11:28:11 host kernel:`, which has no year: pass
`year=`, else `time=None`), Talos (`10.0.0.1: kern: warning: [2026-...Z]: `) and bare
lines. Stamps that carry no UTC offset are read in `tz` (UTC unless told otherwise),
so every returned time is timezone-aware and comparable.

Kernel logs are mostly other things, so lines that are not Xid reports are skipped and
a log without Xids is `[]`. That makes "no Xids" indistinguishable from "not a log at
all" for input that is neither: the collector must treat a failed `dmesg`/`journalctl`
(non-zero exit, permission denied) as a collection error on its own. The parser does
refuse, with `ParseError`, text that opens with a known tool error message
(`dmesg: read kernel buffer failed: ...`, nvidia-smi's failures).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo

from gpumedic.domain.telemetry import XidEvent, canonical_pci_bus_id
from gpumedic.parsers._common import raise_if_tool_error

SOURCE = "kernel log"

# Xid 79 is what the driver reports when a GPU falls off the bus; newer drivers sometimes
# print only the plain message, so one is inferred from it (see `_FALLEN_OFF`).
XID_FALLEN_OFF_BUS = 79

_XID = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>[^)\s]*)[^)]*\): (?P<code>\d+),\s*(?P<text>.*)$")
_FALLEN_OFF = re.compile(
    r"NVRM: (?:The NVIDIA )?GPU (?:at )?(?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)"
    r"\b.*fallen off the bus",
    re.IGNORECASE,
)

# English, plus the abbreviations journalctl prints under a Polish (the corpus has `kwi`)
# or German locale. A month not listed leaves the time unread, never wrong.
_ENGLISH = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_POLISH = ("sty", "lut", "mar", "kwi", "maj", "cze", "lip", "sie", "wrz", "paź", "lis", "gru")
_MONTHS = {
    **dict(zip(_ENGLISH, range(1, 13), strict=True)),
    **dict(zip(_POLISH, range(1, 13), strict=True)),
    **{"mär": 3, "mrz": 3, "mai": 5, "okt": 10, "dez": 12},  # German, where it differs
}

_FACILITY = re.compile(r"^\w+\s*:\w+\s*: ")  # dmesg --decode: "kern  :warn  : "
_TALOS = re.compile(r"^\S+: \w+: \w+: \[(?P<stamp>[^\]]+)\]: ")
_CTIME = re.compile(
    r"^\[(?:\w{3}) (?P<mon>\w{3}) +(?P<day>\d{1,2}) (?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2}) (?P<year>\d{4})\] "
)
_UPTIME = re.compile(r"^\[\s*\d+\.\d+\] ")
_ISO = re.compile(r"^(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?) ")
_SYSLOG = re.compile(r"^(?P<mon>\S{3,5}) +(?P<day>\d{1,2}) (?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2}) \S+ ")


def parse_kernel_log(text: str, *, year: int | None = None, tz: tzinfo = UTC) -> list[XidEvent]:
    """Xid events in log order, plus one inferred Xid 79 per fallen-off-the-bus message
    for a GPU that has no real Xid 79 in the same text."""
    raise_if_tool_error(SOURCE, text, first_lines=3)
    events: list[tuple[int, XidEvent]] = []
    fallen: list[tuple[int, XidEvent]] = []
    for position, (stamp, message) in enumerate(_messages(text, year, tz)):
        if xid := _XID.search(message):
            event = XidEvent(
                code=int(xid.group("code")),
                pci_bus_id=canonical_pci_bus_id(xid.group("pci")),
                time=stamp,
                text=xid.group("text").strip(),
            )
            events.append((position, event))
        elif off := _FALLEN_OFF.search(message):
            body = message[message.index("NVRM:") :].strip()
            event = XidEvent(
                code=XID_FALLEN_OFF_BUS,
                pci_bus_id=canonical_pci_bus_id(off.group("pci")),
                time=stamp,
                text=f"inferred from the driver's fallen-off-the-bus message (no Xid 79 line): {body}",
            )
            fallen.append((position, event))
    reported = {e.pci_bus_id for _, e in events if e.code == XID_FALLEN_OFF_BUS}
    inferred = [(p, e) for p, e in fallen if e.pci_bus_id not in reported]
    return [e for _, e in sorted(events + inferred, key=lambda pe: pe[0])]


def _messages(text: str, year: int | None, tz: tzinfo) -> list[tuple[datetime | None, str]]:
    """(time, message) per logical log message; indented stamp-less lines continue the last one."""
    messages: list[tuple[datetime | None, str]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw[:1] in (" ", "\t") and messages and not _has_stamp(raw.strip()):
            stamp, body = messages[-1]
            continuation = raw.strip().removeprefix("NVRM:").strip()
            messages[-1] = (stamp, f"{body} {continuation}")
            continue
        messages.append(_split_stamp(raw.strip(), year, tz))
    return messages


def _has_stamp(line: str) -> bool:
    return bool(_CTIME.match(line) or _UPTIME.match(line) or _ISO.match(line))


def _split_stamp(line: str, year: int | None, tz: tzinfo) -> tuple[datetime | None, str]:
    line = _FACILITY.sub("", line, count=1)
    if match := _TALOS.match(line):
        return _iso(match.group("stamp"), tz), line[match.end() :]
    if match := _CTIME.match(line):
        return _civil(match, int(match.group("year")), tz), line[match.end() :]
    if match := _UPTIME.match(line):
        return None, line[match.end() :]
    if match := _ISO.match(line):
        return _iso(match.group("stamp"), tz), line[match.end() :]
    if match := _SYSLOG.match(line):
        return (_civil(match, year, tz) if year is not None else None), line[match.end() :]
    return None, line


def _iso(stamp: str, tz: tzinfo) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(stamp.replace(",", "."))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)


def _civil(match: re.Match[str], year: int | None, tz: tzinfo) -> datetime | None:
    month = _MONTHS.get(match.group("mon").casefold().rstrip("."))
    if month is None or year is None:
        return None
    try:
        return datetime(
            year,
            month,
            int(match.group("day")),
            int(match.group("h")),
            int(match.group("m")),
            int(match.group("s")),
            tzinfo=tz,
        )
    except ValueError:
        return None
