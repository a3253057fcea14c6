"""Attribute values are stringified exactly as the contrib exporter's pcommon
AsString() does, so both writers of audit_ingest produce the same rows."""

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from upmetr_audit.shipper.values import any_to_str

from helpers import _any

CASES = [
    ("text", "text"), (True, "true"), (False, "false"), (-42, "-42"),
    (1.0, "1"), (0.1, "0.1"), (-0.0, "-0"), (100.0, "100"), (1e20, "100000000000000000000"),
    (1e21, "1e+21"), (1e-6, "0.000001"), (1e-7, "1e-7"), (1.5e-10, "1.5e-10"),
    (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (float("nan"), "json: unsupported value: NaN"), (float("inf"), "json: unsupported value: +Inf"),
    (b"\x00\xffhi", "AP9oaQ=="),
    (["a", 1, 2.5, True, None], '["a",1,2.5,true,null]'),
    ({"b": 1, "a": {"d": [1.0], "c": "x"}}, '{"a":{"c":"x","d":[1]},"b":1}'),  # keys sorted
    ({"html": "<b>&</b>", "ls": "\u2028"},
     '{"html":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e","ls":"\\u2028"}'),
    ({"é": "ü"}, '{"é":"ü"}'),
    ([1, float("nan")], ""),  # json.Marshal fails on a nested NaN: Go keeps ""
]


@pytest.mark.parametrize("value,expected", CASES, ids=[repr(c[0])[:30] for c in CASES])
def test_any_value_is_stringified_like_pcommon_as_string(value, expected):
    any_value = _any(value) if value is not None else AnyValue()
    assert any_to_str(any_value) == expected


def test_empty_any_value_is_empty_string():
    assert any_to_str(AnyValue()) == ""
