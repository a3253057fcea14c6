"""OTLP logs on the wire: decoding requests and encoding responses.

Handles both encodings of ``ExportLogsServiceRequest``: protobuf and the
OTLP flavour of proto3 JSON (hex trace/span ids, integer enums, 64-bit
integers as strings or numbers, unknown fields ignored).
"""

from __future__ import annotations

import base64
import json
import re

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


_HEX = re.compile(r"[0-9a-fA-F]*")


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
                    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) != size * 2:
                        raise DecodeFailed(f"{key} must be {size * 2} hex digits, not {value!r}")
                    rec[key] = base64.b64encode(bytes.fromhex(value)).decode()


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


def hex_id(raw: bytes, size: int) -> str:
    """Lowercase hex of a trace (16 bytes) or span (8 bytes) id; "" when
    empty or all zero bytes. Any other length makes the request invalid, as
    it does for the OTel Collector (pdata refuses to decode it)."""
    if not raw.strip(b"\0"):
        return ""
    if len(raw) != size:
        raise DecodeFailed(f"a {'trace' if size == 16 else 'span'} id must be {size} bytes, "
                           f"not {len(raw)}")
    return raw.hex()
