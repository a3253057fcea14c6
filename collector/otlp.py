"""OTLP logs on the wire: decoding requests and encoding responses.

Handles both encodings of ``ExportLogsServiceRequest``: protobuf and the
OTLP flavour of proto3 JSON (hex trace/span ids, integer enums, 64-bit
integers as strings or numbers, unknown fields ignored).
"""

from __future__ import annotations

import base64
import decimal
import json
import math

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class DecodeFailed(ValueError):
    """The body is not a valid ExportLogsServiceRequest in its content type."""


def _hex_ids_to_base64(request: dict) -> None:
    """OTLP JSON carries traceId/spanId as hex; protobuf JSON expects base64."""
    for rl in _list(request, "resourceLogs"):
        for sl in _list(rl, "scopeLogs"):
            for rec in _list(sl, "logRecords"):
                if not isinstance(rec, dict):
                    continue
                for key, size in (("traceId", 16), ("spanId", 8)):
                    value = rec.get(key)
                    if value is None or value == "":
                        rec.pop(key, None)
                        continue
                    if not isinstance(value, str) or len(value) != size * 2:
                        raise DecodeFailed(f"{key} must be {size * 2} hex digits")
                    try:
                        rec[key] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        raise DecodeFailed(f"{key} is not hex: {value!r}") from None


def _list(obj, key: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def decode_request(body: bytes, content_type: str) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError) as exc:
            raise DecodeFailed(f"invalid protobuf: {exc}") from None
        return request
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeFailed(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeFailed("invalid JSON: the body must be an object")
    _hex_ids_to_base64(data)
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as exc:
        raise DecodeFailed(f"invalid OTLP JSON: {exc}") from None
    return request


def encode_response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    response = ExportLogsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(response)).encode()
    return response.SerializeToString()


def encode_status(content_type: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A ``google.rpc.Status`` error body, with RetryInfo when a retry is wanted."""
    status = status_pb2.Status(message=message)
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.seconds = retry_after_s
        status.details.add().Pack(info)
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(status)).encode()
    return status.SerializeToString()


# -- AnyValue -> string, exactly as the contrib exporter's pcommon AsString() --------
#
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


def hex_id(raw: bytes) -> str:
    """Lowercase hex of a trace/span id; "" when empty or all zero bytes."""
    return raw.hex() if raw.strip(b"\0") else ""
