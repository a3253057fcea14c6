"""OTLP ``AnyValue`` → string, exactly as the contrib ClickHouse exporter's
pcommon ``AsString()`` does, so that every writer of ``audit_ingest`` (our
collector, the official OTel Collector) stores the same text, and the
shipper judges a record the way the collector will.
"""

from __future__ import annotations

import base64
import decimal
import json
import math

# Strings as they are; bools "true"/"false"; ints in decimal; doubles in the
# ES6 number format Go's encoding/json uses; bytes as base64; arrays and maps
# as Go's json.Marshal writes them: keys sorted, <, >, & and U+2028/2029
# escaped, and "" when a NaN or an infinity is nested inside.

_GO_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                  "\u2028": "\\u2028", "\u2029": "\\u2029"})


class _Unsupported(ValueError):
    pass


def go_float(f: float) -> str:
    """Go's float64AsString: the shortest round-trip digits, ES6 style."""
    if math.isnan(f) or math.isinf(f):
        return "json: unsupported value: " + ("NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf"))
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        text = repr(f)  # Python's repr is scientific here, with a 2-digit exponent minimum
        mantissa, exp = text.split("e")
        sign, digits = exp[0], exp[1:].lstrip("0") or "0"
        if sign == "+" or len(digits) >= 2:
            return f"{mantissa}e{sign}{digits.zfill(2)}"
        return f"{mantissa}e-{digits}"  # Go cleans e-09 up to e-9
    text = format(decimal.Decimal(repr(f)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _go_json(value) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return json.dumps(value.string_value, ensure_ascii=False).translate(_GO_HTML_ESCAPES)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        if math.isnan(value.double_value) or math.isinf(value.double_value):
            raise _Unsupported()
        return go_float(value.double_value)
    if kind == "bytes_value":
        return '"' + base64.b64encode(value.bytes_value).decode() + '"'
    if kind == "array_value":
        return "[" + ",".join(_go_json(v) for v in value.array_value.values) + "]"
    if kind == "kvlist_value":
        items = {kv.key: kv.value for kv in value.kvlist_value.values}  # last key wins
        return "{" + ",".join(
            json.dumps(k, ensure_ascii=False).translate(_GO_HTML_ESCAPES) + ":" + _go_json(items[k])
            for k in sorted(items)) + "}"
    return "null"


def any_to_str(value) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return ""
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return go_float(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    try:
        return _go_json(value)
    except _Unsupported:
        return ""


def attrs_to_dict(kvs) -> dict[str, str]:
    # Hot path: a non-empty string_value can only be the string member of the
    # oneof, so WhichOneof is needed only for the other kinds (and for "").
    out = {}
    for kv in kvs:
        value = kv.value
        out[kv.key] = value.string_value or any_to_str(value)
    return out
