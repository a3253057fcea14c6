"""What Grafana and the ClickHouse plugin do to a query's text before ClickHouse sees it.

1. The frontend (``CHDatasource``) applies ``$__conditionalAll(cond, $var)``:
   ``1=1`` when the variable is All (``$__all``) or empty, else ``cond``.
2. Grafana interpolates dashboard variables: ``$var``, ``${var}``, ``${var:singlequote}``
   (multi values joined with ``,``, each quoted with ``'`` escaped as ``\\'``).
3. The plugin's backend expands the ``$__`` macros (pkg/macros/macros.go, through
   macropro): the table in shared/reference/grafana-clickhouse.md, for v4.20
   (macros in arguments are expanded, none inside string literals or comments).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALL = "$__all"


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval: timedelta = timedelta(seconds=60)


def _close(text: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at``."""
    depth, i = 0, open_at
    while i < len(text):
        c = text[i]
        if c == "'":
            i = _string_end(text, i)
            continue
        depth += (c == "(") - (c == ")")
        if depth == 0:
            return i
        i += 1
    raise ValueError(f"unbalanced parentheses after {text[open_at:open_at + 40]!r}")


def _string_end(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == "'":
            if text[j + 1:j + 2] == "'":
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise ValueError("unterminated string literal")


def _split_args(text: str) -> list[str]:
    args, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "'":
            i = _string_end(text, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    args.append(text[start:].strip())
    return [a for a in args if a] if len(args) == 1 else args


# -- 1 and 2: the frontend --------------------------------------------------------

def _is_all(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return values in ([], [""]) or ALL in values


def _format(value, fmt: str | None) -> str:
    values = value if isinstance(value, list) else [value]
    if fmt == "singlequote" or (fmt is None and len(values) > 1):
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt not in (None, "raw"):
        raise ValueError(f"format {fmt} is not emulated")
    return values[0]


def interpolate(sql: str, variables: dict, options: dict | None = None) -> str:
    """Steps 1 and 2. ``variables``: name → the selected value(s) (``ALL`` for All);
    ``options``: name → every value, used for All outside ``$__conditionalAll``."""
    out, i = [], 0
    marker = "$__conditionalAll("
    while (j := sql.find(marker, i)) >= 0:
        end = _close(sql, j + len(marker) - 1)
        args = _split_args(sql[j + len(marker):end])
        if len(args) != 2 or not re.fullmatch(r"\$\{?\w+\}?", args[1]):
            raise ValueError(f"$__conditionalAll needs (condition, $variable), got {args}")
        name = args[1].strip("${}")
        out.append(sql[i:j])
        out.append("1=1" if _is_all(variables[name]) else args[0])
        i = end + 1
    sql = "".join(out) + sql[i:]

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name.startswith("__") or name not in variables:
            return m.group(0)
        value = variables[name]
        if _is_all(value) and value != "":
            value = (options or {})[name]
        return _format(value, m.group(2))
    return re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", sub, sql)


# -- 3: the backend's macros ----------------------------------------------------------

def _go_duration_seconds(text: str) -> int:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text.strip():
        raise ValueError(f"invalid duration {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


def _compact(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _macro(name: str, args: list[str] | None, tr: TimeRange) -> str | None:
    start, end = tr.start.astimezone(UTC), tr.end.astimezone(UTC)
    f, t = math.floor(start.timestamp()), math.floor(end.timestamp())
    f_ms, t_ms = _millis(start), _millis(end)
    secs = max(int(tr.interval.total_seconds()), 1)
    ms = max(int(tr.interval / timedelta(milliseconds=1)), 1)
    d_from, d_to = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")

    def need(n: int) -> list[str]:
        if args is None or len(args) != n:
            raise ValueError(f"$__{name} expects {n} argument(s), got {args}")
        return args
    table = {
        "timeFilter": lambda: "{0} >= toDateTime({1}) AND {0} <= toDateTime({2})".format(need(1)[0], f, t),
        "timeFilter_ms": lambda: (f"{need(1)[0]} >= fromUnixTimestamp64Milli({f_ms}) AND "
                                  f"{need(1)[0]} <= fromUnixTimestamp64Milli({t_ms})"),
        "dateFilter": lambda: f"{need(1)[0]} >= toDate('{d_from}') AND {args[0]} <= toDate('{d_to}')",
        "dateTimeFilter": lambda: (f"({need(2)[0]} >= toDate('{d_from}') AND {args[0]} <= toDate('{d_to}')) "
                                   f"AND ({args[1]} >= toDateTime({f}) AND {args[1]} <= toDateTime({t}))"),
        "fromTime": lambda: f"toDateTime({f})",
        "toTime": lambda: f"toDateTime({t})",
        "fromTime_ms": lambda: f"fromUnixTimestamp64Milli({f_ms})",
        "toTime_ms": lambda: f"fromUnixTimestamp64Milli({t_ms})",
        "timeFrom": lambda: f"{need(1)[0]} >= toDateTime({f})",
        "timeTo": lambda: f"{need(1)[0]} <= toDateTime({t})",
        "timeGroup": lambda: (f"toStartOfInterval(toDateTime({need(2)[0]}), "
                              f"INTERVAL {_go_duration_seconds(args[1])} second)"),
        "timeInterval": lambda: f"toStartOfInterval(toDateTime({need(1)[0]}), INTERVAL {secs} second)",
        "timeInterval_ms": lambda: (f"toStartOfInterval(toDateTime64({need(1)[0]}, 3), "
                                    f"INTERVAL {ms} millisecond)"),
        "interval_s": lambda: str(secs),
        "interval_ms": lambda: str(ms),
        "interval": lambda: _compact(ms),
    }
    table["dt"] = table["dateTimeFilter"]
    fn = table.get(name)
    return fn() if fn else None


def _millis(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)


def expand_macros(sql: str, tr: TimeRange) -> str:
    out, i = [], 0
    while i < len(sql):
        if sql[i] == "'":
            j = _string_end(sql, i)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = len(sql) if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.index("*/", i) + 2
        elif (m := re.compile(r"\$__(\w+)").match(sql, i)):
            j, args = m.end(), None
            if sql[j:j + 1] == "(":
                close = _close(sql, j)
                args = [expand_macros(a, tr) for a in _split_args(sql[j + 1:close])]
                j = close + 1
            expanded = _macro(m.group(1), args, tr)
            out.append(sql[i:j] if expanded is None else expanded)
            i = j
            continue
        else:
            j = i + 1
        out.append(sql[i:j])
        i = j
    return "".join(out)


def render(sql: str, tr: TimeRange, variables: dict | None = None, options: dict | None = None) -> str:
    """What ClickHouse receives for ``sql`` on a dashboard (or, without variables, an alert rule)."""
    return expand_macros(interpolate(sql, variables or {}, options), tr)
