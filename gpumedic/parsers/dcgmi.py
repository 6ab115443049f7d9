"""`dcgmi diag`, `dcgmi health -c` and `dcgmi discovery -l` -> diagnostics domain types.

Both the boxed tables and `-j` JSON are read, for DCGM 2.x (`Blacklist`, per-test
"Pass - All"), 3.x (`Denylist`, Metadata section) and 4.x (lower-case plugin names,
one `GPUn: Pass` row per GPU; JSON under "DCGM Diagnostic" with entity ids).

The safety rule for `dcgmi diag`: a report is `passed` only when at least one test
ran, no test or row says Fail or Error, the word "fail" appears nowhere in the
output, and (for tables) the table reached its closing border. A table cut short with
no failure in what remains is refused with `ParseError`, since the missing rows could
hold one; a cut table that already shows a failure is returned as failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpumedic.domain.diagnostics import (
    DiagReport,
    DiagStatus,
    DiagTestResult,
    GpuDiagResult,
    HealthCheck,
    HealthIncident,
    HealthStatus,
)
from gpumedic.parsers._common import is_digits, raise_if_tool_error, require_text
from gpumedic.parsers.errors import ParseError

DIAG = "dcgmi diag"
HEALTH = "dcgmi health"
DISCOVERY = "dcgmi discovery"

_STATUS_WORDS = {
    "pass": DiagStatus.PASS,
    "passed": DiagStatus.PASS,
    "fail": DiagStatus.FAIL,
    "failed": DiagStatus.FAIL,
    "error": DiagStatus.FAIL,
    "warn": DiagStatus.WARN,
    "warning": DiagStatus.WARN,
    "skip": DiagStatus.SKIP,
    "skipped": DiagStatus.SKIP,
}
_STATUS_CELL = re.compile(
    r"^(?P<status>Pass|Fail|Warn|Skip|Not Run|Incomplete|Error)"
    r"(?:\s*-\s*(?:(?P<all>All)|GPUs?:\s*(?P<gpus>\d+(?:\s*,\s*\d+)*)))?$",
    re.IGNORECASE,
)
_GPU_STATUS_CELL = re.compile(r"^GPU\s*(?P<gpu>\d+):\s*(?P<status>Pass|Fail|Warn|Skip|Not Run|Incomplete|Error)$", re.I)
_SECTION = re.compile(r"^[|+]-+\s+(?P<name>\S.*?)\s+-+[+|]")
_MESSAGE_KINDS = {"warning": "warnings", "info": "info", "error": "errors"}
_GPU_MENTION = re.compile(r"\bGPU\s*(\d+)\b")
_FAIL_WORD = re.compile(r"\bfail", re.IGNORECASE)


def _status(word: str) -> DiagStatus:
    """DCGM's status word; anything unknown is NOT_RUN, never PASS."""
    return _STATUS_WORDS.get(" ".join(word.split()).casefold(), DiagStatus.NOT_RUN)


# ---------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True)
class _Line:
    kind: str  # "border" (+---+), "section" (|-- Name --|), "row" (| a | b |), "text"
    cells: tuple[str, ...] = ()  # raw cell text for rows, padding included
    name: str = ""  # section name
    closed: bool = True  # the row ends with its closing "|"
    width: int = 0  # characters in a border line


def _table_lines(text: str) -> list[_Line]:
    lines: list[_Line] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            continue
        if section := _SECTION.match(stripped):
            lines.append(_Line("section", name=section.group("name").strip()))
        elif stripped.startswith("+") and set(stripped) <= set("+-="):
            lines.append(_Line("border", width=len(stripped)))
        elif stripped.startswith("|"):
            closed = stripped.endswith("|") and len(stripped) > 1
            inner = stripped[1:-1] if closed else stripped[1:]
            lines.append(_Line("row", cells=tuple(inner.split("|")), closed=closed))
        else:
            lines.append(_Line("text", cells=(stripped,)))
    return lines


def _table_closed(lines: list[_Line], text: str) -> bool:
    """The tool finished printing the table: it ends with a full-width border and a line feed.

    A cut can leave what looks like a border (`+-----` of a section bar, or the first
    column's `+---+`), so the last border must be as wide as the table's first one.
    """
    table = [ln for ln in lines if ln.kind != "text"]
    borders = [ln for ln in table if ln.kind == "border"]
    return text.endswith("\n") and bool(table) and table[-1].kind == "border" and table[-1].width == borders[0].width


def _join_wrapped(chunks: Iterable[str], width: int | None) -> str:
    """Undo DCGM's fixed-width wrap: chunks are cut every `width` characters, mid-word."""
    parts = list(chunks)
    if width is None:
        return " ".join(" ".join(parts).split())
    padded = [p.ljust(width) for p in parts[:-1]] + parts[-1:]
    return " ".join("".join(padded).split())


# ------------------------------------------------------------------------------ diag


@dataclass
class _TestBuilder:
    name: str
    category: str | None
    statuses: list[DiagStatus] = field(default_factory=list)
    per_gpu: dict[int, DiagStatus] = field(default_factory=dict)
    messages: dict[str, list[str]] = field(default_factory=lambda: {"warnings": [], "info": [], "errors": []})

    def build(self) -> DiagTestResult:
        statuses = self.statuses + list(self.per_gpu.values())
        if self.messages["errors"]:
            statuses.append(DiagStatus.FAIL)
        return DiagTestResult(
            name=self.name,
            category=self.category,
            status=_overall(statuses),
            per_gpu=tuple(GpuDiagResult(g, s) for g, s in sorted(self.per_gpu.items())),
            warnings=tuple(self.messages["warnings"]),
            errors=tuple(self.messages["errors"]),
            info=tuple(self.messages["info"]),
        )


def _overall(statuses: list[DiagStatus]) -> DiagStatus:
    for worst in (DiagStatus.FAIL, DiagStatus.NOT_RUN, DiagStatus.WARN, DiagStatus.PASS):
        if worst in statuses:
            return worst
    return DiagStatus.SKIP if statuses else DiagStatus.NOT_RUN


def parse_dcgmi_diag(text: str) -> DiagReport:
    """`dcgmi diag -r N` as a table or as `-j` JSON, DCGM 2.x to 4.x."""
    require_text(DIAG, text)
    raise_if_tool_error(DIAG, text)
    if _is_json(text):
        return _diag_json(text)
    return _diag_table(text)


def _is_json(text: str) -> bool:
    """`-j` output: a line opening a JSON object and no table rows (a warning may lead)."""
    return bool(re.search(r"^\s*\{", text, re.MULTILINE)) and not re.search(r"^\s*[|+]", text, re.MULTILINE)


def _diag_table(text: str) -> DiagReport:
    lines = _table_lines(text)
    metadata: dict[str, str] = {}
    tests: list[_TestBuilder] = []
    category: str | None = None
    current: _TestBuilder | None = None
    message: tuple[str, list[str]] | None = None  # (kind, wrapped chunks) being read
    width: int | None = None
    saw_status = False

    def close_message() -> None:
        nonlocal message
        if message is not None and current is not None:
            current.messages[message[0]].append(_join_wrapped(message[1], width))
        message = None

    for line in lines:
        if line.kind == "section":
            close_message()
            category, current = line.name, None
            continue
        if line.kind != "row" or len(line.cells) != 2:
            if line.kind == "row" and len(line.cells) != 2:
                raise ParseError(DIAG, "a table row does not have the two diagnostic columns", "|".join(line.cells))
            continue
        left, right_raw = line.cells[0].strip(), line.cells[1]
        if line.closed:
            width = len(right_raw) - 3
        chunk = right_raw[1:] if right_raw.startswith(" ") else right_raw
        if width is not None and line.closed:
            chunk = chunk[:width]
        right = right_raw.strip()
        if left == "Diagnostic" and right == "Result":
            continue
        if category is not None and category.casefold() == "metadata":
            if left:
                metadata[left] = right
            continue
        if left.casefold() in _MESSAGE_KINDS:
            close_message()
            if current is None:
                # A message with no test above it (an excerpt cut the test row off):
                # keep it under a test named for its section.
                current = _TestBuilder(category or "Diagnostic", category)
                tests.append(current)
            message = (_MESSAGE_KINDS[left.casefold()], [chunk])
            continue
        if left:
            close_message()
            status = _STATUS_CELL.match(right)
            if status is None:
                raise ParseError(DIAG, f"test {left!r} has no result this parser knows", right)
            _require_closed(line)
            current = _TestBuilder(left, category)
            tests.append(current)
            _apply_status(current, status)
            saw_status = True
            continue
        # A row with an empty name: a per-GPU result, another status line, or wrapped text.
        if gpu_status := _GPU_STATUS_CELL.match(right):
            _require_closed(line)
            close_message()
            if current is None:
                raise ParseError(DIAG, "a per-GPU result precedes any test", right)
            current.per_gpu[int(gpu_status.group("gpu"))] = _status(gpu_status.group("status"))
            saw_status = True
        elif (status := _STATUS_CELL.match(right)) and current is not None and message is None:
            _require_closed(line)
            _apply_status(current, status)
        elif message is not None:
            message[1].append(chunk)
        elif right:
            raise ParseError(DIAG, "a continuation row belongs to no test or message", right)
    close_message()

    if not tests or not (saw_status or any(t.messages["errors"] for t in tests)):
        raise ParseError(DIAG, "no diagnostic results were found: not dcgmi diag output", text)
    report = _report(
        [t.build() for t in tests], text, metadata.get("DCGM Version"), metadata.get("Driver Version Detected")
    )
    if report.passed and not _table_closed(lines, text):
        raise ParseError(DIAG, "the table is cut off before its closing border; a pass cannot be confirmed", text)
    return report


def _require_closed(line: _Line) -> None:
    # "Fail - GPU: 12" cut after the 1 would name the wrong GPU.
    if not line.closed:
        raise ParseError(DIAG, "a result row is cut off before its closing border", "|".join(line.cells))


def _apply_status(test: _TestBuilder, status: re.Match[str]) -> None:
    word = _status(status.group("status"))
    if status.group("gpus"):
        for gpu in status.group("gpus").split(","):
            test.per_gpu[int(gpu)] = word
    else:
        test.statuses.append(word)


def _report(tests: list[DiagTestResult], text: str, dcgm_version: str | None, driver_version: str | None) -> DiagReport:
    failed = {r.gpu for t in tests for r in t.per_gpu if r.status is DiagStatus.FAIL}
    for test in tests:
        for error in test.errors:
            failed.update(int(g) for g in _GPU_MENTION.findall(error))
    passed = (
        bool(tests)
        and all(t.status in (DiagStatus.PASS, DiagStatus.SKIP, DiagStatus.WARN) for t in tests)
        and any(t.status is not DiagStatus.SKIP for t in tests)
        and not _FAIL_WORD.search(text)
    )
    return DiagReport(
        passed=passed,
        tests=tuple(tests),
        failed_gpus=frozenset(failed),
        dcgm_version=dcgm_version,
        driver_version=driver_version,
    )


def _load_json(source: str, text: str) -> Any:
    """The JSON document in `text`; dcgmi may print a warning line before it."""
    start = text.find("{")
    if start < 0:
        raise ParseError(source, "no JSON object in the output", text)
    try:
        document, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise ParseError(source, f"the JSON is malformed or cut off ({err.msg} at char {err.pos})", text) from None
    if not isinstance(document, dict):
        raise ParseError(source, "the JSON document is not an object", text)
    return document


def _diag_json(text: str) -> DiagReport:
    document = _load_json(DIAG, text)
    root = document.get("DCGM GPU Diagnostic") or document.get("DCGM Diagnostic") or document
    if not isinstance(root, dict):
        raise ParseError(DIAG, "the diagnostic section is not an object", text)
    runtime_error = root.get("runtime_error") or document.get("runtime_error")
    if runtime_error:
        raise ParseError(DIAG, f"the diagnostic did not run: {runtime_error}", str(runtime_error))
    categories = root.get("test_categories")
    if categories is None and isinstance(root.get("tests"), list):
        categories = [{"category": None, "tests": root["tests"]}]
    if not isinstance(categories, list):
        raise ParseError(DIAG, "no test_categories in the JSON: not dcgmi diag -j output", text)
    tests: list[DiagTestResult] = []
    for entry in categories:
        if not isinstance(entry, dict):
            continue
        for test in _list(entry.get("tests")):
            if isinstance(test, dict):
                tests.append(_json_test(test, entry.get("category")))
    if not tests:
        raise ParseError(DIAG, "the JSON holds no test results", text)
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    version = metadata.get("version") or metadata.get("DCGM Version") or root.get("version")
    driver = metadata.get("Driver Version Detected") or root.get("Driver Version Detected")
    return _report(tests, text, _opt_str(version), _opt_str(driver))


def _json_test(test: Mapping[str, Any], category: Any) -> DiagTestResult:
    name = str(test.get("name") or test.get("test_name") or "unnamed test")
    builder = _TestBuilder(name, None if category is None else str(category))
    summary = test.get("test_summary")
    if isinstance(summary, dict) and summary.get("status"):
        builder.statuses.append(_status(str(summary["status"])))
    for result in _list(test.get("results")):
        if not isinstance(result, dict):
            continue
        status = _status(str(result.get("status", "")))
        gpus = _json_gpus(result)
        if gpus:
            for gpu in gpus:
                builder.per_gpu[gpu] = _overall([builder.per_gpu[gpu], status]) if gpu in builder.per_gpu else status
        else:
            builder.statuses.append(status)
        builder.messages["warnings"].extend(_json_messages(result.get("warnings"), "warning"))
        builder.messages["warnings"].extend(_json_messages(result.get("warning"), "warning"))
        builder.messages["errors"].extend(_json_messages(result.get("errors") or result.get("error"), "error"))
        builder.messages["info"].extend(_json_messages(result.get("info"), "info"))
    if not builder.statuses and not builder.per_gpu:
        builder.statuses.append(DiagStatus.NOT_RUN)
    return builder.build()


def _json_gpus(result: Mapping[str, Any]) -> list[int]:
    """GPU ids of one result: DCGM 2/3 `gpu_ids` ("0,1,2" or "0"), DCGM 4 entity ids."""
    if "entity_id" in result:
        group = str(result.get("entity_group", "GPU"))
        return [int(result["entity_id"])] if group.upper() == "GPU" and _is_int(result["entity_id"]) else []
    raw = result.get("gpu_ids", result.get("gpu_id"))
    if raw is None:
        return []
    if isinstance(raw, int):
        return [raw]
    return [int(part) for part in str(raw).split(",") if is_digits(part.strip())]


def _json_messages(raw: Any, key: str) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    messages = []
    for item in items:
        if isinstance(item, dict):
            item = item.get(key) or item.get("message") or item.get("msg")
        if item:
            messages.append(" ".join(str(item).split()))
    return messages


def _list(value: Any) -> list[Any]:
    """`value` if the document put a list there; anything else reads as empty."""
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and is_digits(value))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------------- health

_HEALTH_WORDS = {
    "healthy": HealthStatus.HEALTHY,
    "pass": HealthStatus.HEALTHY,
    "warning": HealthStatus.WARNING,
    "warn": HealthStatus.WARNING,
    "failure": HealthStatus.FAILURE,
    "fail": HealthStatus.FAILURE,
}


def _health(word: str) -> HealthStatus:
    return _HEALTH_WORDS.get(" ".join(word.split()).casefold(), HealthStatus.UNKNOWN)


def parse_dcgmi_health(text: str) -> HealthCheck:
    """`dcgmi health -c` (table) or `dcgmi health -c -j`."""
    require_text(HEALTH, text)
    raise_if_tool_error(HEALTH, text)
    if _is_json(text):
        return _health_json(text)
    return _health_table(text)


def _health_json(text: str) -> HealthCheck:
    document = _load_json(HEALTH, text)
    body = document.get("body")
    header = _list(document.get("header"))
    if not isinstance(body, dict) or "Health Monitor Report" not in header:
        raise ParseError(HEALTH, "not a `Health Monitor Report` JSON document", text)
    overall_node = body.get("Overall Health")
    if not isinstance(overall_node, dict) or not isinstance(overall_node.get("value"), str):
        raise ParseError(HEALTH, "the report has no Overall Health value", text)
    incidents: list[HealthIncident] = []
    entities: list[tuple[str, int, HealthStatus]] = []
    for group, group_node in body.items():
        if group == "Overall Health" or not isinstance(group_node, dict):
            continue
        for entity, entity_node in _dict(group_node.get("children")).items():
            if not isinstance(entity_node, dict) or not is_digits(str(entity)):
                continue
            entities.append((group, int(entity), _health(str(entity_node.get("value", "")))))
            for kind_node in _dict(entity_node.get("children")).values():
                for system, system_node in _dict(_dict(kind_node).get("children")).items():
                    if not isinstance(system_node, dict):
                        continue
                    overflow = _list(system_node.get("overflow"))
                    message = " ".join(" ".join(str(part) for part in overflow).split())
                    incidents.append(
                        HealthIncident(group, int(entity), system, _health(str(system_node.get("value", ""))), message)
                    )
    return HealthCheck(_health(overall_node["value"]), tuple(incidents), tuple(entities))


def _health_table(text: str) -> HealthCheck:
    lines = _table_lines(text)
    if not any(ln.kind == "row" and ln.cells[0].strip() == "Health Monitor Report" for ln in lines):
        raise ParseError(HEALTH, "no `Health Monitor Report` table: not dcgmi health -c output", text)
    if not _table_closed(lines, text):
        raise ParseError(HEALTH, "the health table is cut off before its closing border", text)
    overall: HealthStatus | None = None
    incidents: list[HealthIncident] = []
    entities: list[tuple[str, int, HealthStatus]] = []
    group = ""
    entity: int | None = None
    system: tuple[str, HealthStatus, list[str]] | None = None

    def close_system() -> None:
        nonlocal system
        if system is not None and entity is not None:
            name, status, words = system
            incidents.append(HealthIncident(group, entity, name, status, " ".join(" ".join(words).split())))
        system = None

    for line in lines:
        if line.kind != "row" or len(line.cells) != 2:
            continue
        left_raw, right = line.cells[0], line.cells[1].strip()
        label = left_raw.strip()
        if not label:
            if system is None:
                raise ParseError(HEALTH, "a message row belongs to no health system", right)
            system[2].append(right)
            continue
        # The tree prints level n as `-> label` right-aligned in 3n columns.
        level = 0 if not label.startswith("->") else (len(left_raw) - len(left_raw.lstrip()) - 1) // 3 + 1
        name = label.removeprefix("->").strip()
        if level == 0:
            close_system()
            if name == "Overall Health":
                overall = _health(right)
            else:
                group, entity = name, None
        elif level == 1:
            close_system()
            if not is_digits(name):
                raise ParseError(HEALTH, f"entity {name!r} under {group!r} is not an id", label)
            entity = int(name)
            entities.append((group, entity, _health(right)))
        elif level == 3:
            close_system()
            system = (name, _health(right), [])
        else:
            close_system()  # level 2: the "Errors" / "Warnings" heading
    close_system()
    if overall is None:
        raise ParseError(HEALTH, "the report has no Overall Health row", text)
    return HealthCheck(overall, tuple(incidents), tuple(entities))


# ------------------------------------------------------------------------- discovery

_FOUND = re.compile(r"^(\d+) GPUs? found\b")


def parse_dcgmi_discovery(text: str) -> list[tuple[int, str]]:
    """`dcgmi discovery -l` -> [(DCGM GPU id, UUID)]; the product name when no UUID is printed."""
    require_text(DISCOVERY, text)
    raise_if_tool_error(DISCOVERY, text)
    lines = _table_lines(text)
    expected: int | None = None
    gpus: dict[int, dict[str, str]] = {}
    current: int | None = None
    in_gpu_table = False
    finished = False
    for line in lines:
        if line.kind == "text":
            if found := _FOUND.match(line.cells[0]):
                expected, in_gpu_table = int(found.group(1)), True
                continue
            if in_gpu_table:  # "0 NvSwitches found." starts the next table
                in_gpu_table = False
            continue
        if not in_gpu_table:
            continue
        if line.kind == "border":
            finished = current is not None or expected == 0
            current = None
            continue
        if line.kind != "row" or len(line.cells) != 2:
            continue
        left, right = line.cells[0].strip(), line.cells[1].strip()
        if left == "GPU ID":
            continue
        if left:
            if not is_digits(left):
                raise ParseError(DISCOVERY, f"GPU id {left!r} is not a number", left)
            current = int(left)
            gpus[current] = {}
            finished = False
        if current is not None and ":" in right:
            key, value = right.split(":", 1)
            gpus[current][key.strip()] = value.strip()
    if expected is None:
        raise ParseError(DISCOVERY, "no `N GPUs found.` line: not dcgmi discovery output", text)
    if len(gpus) != expected or (expected and not finished):
        raise ParseError(DISCOVERY, f"the output announces {expected} GPU(s) but lists {len(gpus)} complete", text)
    result = []
    for gpu_id, info in gpus.items():
        ident = info.get("Device UUID") or info.get("Name")
        if not ident:
            raise ParseError(DISCOVERY, f"GPU {gpu_id} has neither a UUID nor a name", text)
        result.append((gpu_id, ident))
    return result
