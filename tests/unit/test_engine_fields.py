"""Vault-compatible parameter decoding (vaultd/engines/fields.py).

Expected strings are what OpenBao 2.7.2 answered for the same inputs.
"""

from __future__ import annotations

import pytest

from vaultd.engines.fields import (
    ABSENT,
    FieldError,
    Params,
    go_quote,
    ignored_warning,
    multierror,
    parse_go_duration_ns,
    parse_go_int,
    to_bool,
    to_duration_seconds,
    to_int,
    to_int_list,
    to_map,
)
from vaultd.errors import BadRequest

INVALID_INT = "'' cannot parse value as 'int': strconv.ParseInt: invalid syntax"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("7", 7), ("-7", -7), ("+7", 7), ("01", 1), ("010", 8), ("0x10", 16), ("0X1f", 31),
     ("0o17", 15), ("0b101", 5), ("9223372036854775807", 2**63 - 1)],
)
def test_parse_go_int_accepts_go_syntax(text: str, value: int) -> None:
    assert parse_go_int(text) == value


@pytest.mark.parametrize("text", ["", "-", "x", " 5", "5 ", "1e3", "1.0", "08", "0x", "1_000", "٣"])
def test_parse_go_int_rejects(text: str) -> None:
    with pytest.raises(FieldError, match="invalid syntax"):
        parse_go_int(text)


def test_parse_go_int_range() -> None:
    with pytest.raises(FieldError, match="value out of range"):
        parse_go_int("99999999999999999999")


@pytest.mark.parametrize(("raw", "value"), [(None, 0), (True, 1), (False, 0), (5, 5), ("", 0), ("0x10", 16)])
def test_to_int_weak_decoding(raw: object, value: int) -> None:
    assert to_int(raw) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (1.0, INVALID_INT),
        (2.5, INVALID_INT),
        ("abc", INVALID_INT),
        ([], "'' expected type 'int', got unconvertible type '[]interface {}'"),
        ({}, "'' expected type 'int', got unconvertible type 'map[string]interface {}'"),
        (2**70, "'' cannot parse value as 'int': strconv.ParseInt: value out of range"),
    ],
)
def test_to_int_errors(raw: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        to_int(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("raw", "value"),
    [(True, True), (None, False), ("true", True), ("t", True), ("TRUE", True), ("1", True), (1, True),
     ("false", False), ("F", False), (0, False), ("", False)],
)
def test_to_bool(raw: object, value: bool) -> None:
    assert to_bool(raw) is value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("yes", "'' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"),
        (2, "'' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"),
        (1.0, "'' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"),
        ([], "'' expected type 'bool', got unconvertible type '[]interface {}'"),
    ],
)
def test_to_bool_errors(raw: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        to_bool(raw)
    assert str(info.value) == message


def test_to_map_merges_lists_of_maps_like_mapstructure() -> None:
    assert to_map({"a": 1}) == {"a": 1}
    assert to_map(None) is None
    assert to_map([]) == {}
    assert to_map([{"a": 1}, None, [{"b": 2}]]) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("str", "'' expected type 'map[string]interface {}', got unconvertible type 'string'"),
        (5, "'' expected type 'map[string]interface {}', got unconvertible type 'json.Number'"),
        (True, "'' expected type 'map[string]interface {}', got unconvertible type 'bool'"),
        ([1], "'[0]' expected type 'map[string]interface {}', got unconvertible type 'json.Number'"),
        ([["a"]], "'[0][0]' expected type 'map[string]interface {}', got unconvertible type 'string'"),
    ],
)
def test_to_map_errors(raw: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        to_map(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("raw", "value"),
    [(None, []), ([1, 2], [1, 2]), ("1,2", [1, 2]), (["3"], [3]), (4, [4]), (True, [1]), ([-1, 0], [-1, 0])],
)
def test_to_int_list(raw: object, value: list[int]) -> None:
    assert to_int_list(raw) == value


@pytest.mark.parametrize(
    ("raw", "where", "detail"),
    [
        ("x", "[0]", "cannot parse value as 'int': strconv.ParseInt: invalid syntax"),
        ("1, 2", "[1]", "cannot parse value as 'int': strconv.ParseInt: invalid syntax"),
        ([1.5], "[0]", "cannot parse value as 'int': strconv.ParseInt: invalid syntax"),
        ({"a": 1}, "[0]", "expected type 'int', got unconvertible type 'map[string]interface {}'"),
    ],
)
def test_to_int_list_errors(raw: object, where: str, detail: str) -> None:
    with pytest.raises(FieldError) as info:
        to_int_list(raw)
    assert str(info.value) == f"decoding failed due to the following error(s):\n\n'{where}' {detail}"


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("1s", 10**9), ("1h30m", 5400 * 10**9), ("1.5h", 5400 * 10**9), ("-5m", -300 * 10**9),
     ("+2s", 2 * 10**9), ("300ms", 3 * 10**8), ("1us", 1000), ("1µs", 1000), (".5s", 5 * 10**8), ("-0s", 0)],
)
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("bogus", 'time: invalid duration "bogus"'),
        ("1.5", 'time: missing unit in duration "1.5"'),
        ("5S", 'time: unknown unit "S" in duration "5S"'),
        ("1h-1m", 'time: unknown unit "h-" in duration "1h-1m"'),
        (".s", 'time: invalid duration ".s"'),
    ],
)
def test_parse_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(FieldError) as info:
        parse_go_duration_ns(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 0), ("", 0), (3600, 3600), ("3600", 3600), ("1h", 3600), ("1d", 86400), ("90m", 5400),
     ("1500ms", 1)],
)
def test_duration_seconds(raw: object, seconds: int) -> None:
    assert to_duration_seconds(raw) == seconds


def test_duration_seconds_errors() -> None:
    with pytest.raises(FieldError, match=r"^cannot provide negative value '-300'$"):
        to_duration_seconds("-5m")
    assert to_duration_seconds("-5m", signed=True) == -300
    with pytest.raises(FieldError, match=r"^could not parse duration from input$"):
        to_duration_seconds(True)
    with pytest.raises(FieldError, match=r"^could not parse duration from input$"):
        to_duration_seconds([1])
    with pytest.raises(FieldError) as info:
        to_duration_seconds(1.5)
    assert str(info.value) == 'time: missing unit in duration "1.5"'


def test_go_quote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there\n") == '"tab\\there\\n"'
    assert go_quote("a\x01b\x7f") == '"a\\x01b\\x7f"'
    assert go_quote("é\u00a0") == '"é\\u00a0"'


def test_multierror_formats() -> None:
    assert multierror(["one"]) == "1 error occurred:\n\t* one\n\n"
    assert multierror(["one", "two"]) == "2 errors occurred:\n\t* one\n\t* two\n\n"


def test_params_prefix_and_absent() -> None:
    params = Params({"n": "x", "m": 3}, prefixed=True)
    assert params.int("missing") is ABSENT
    assert params.int("m") == 3
    with pytest.raises(BadRequest) as info:
        params.int("n")
    assert info.value.messages == [f'Field validation failed: error converting input for field "n": {INVALID_INT}']
    with pytest.raises(BadRequest) as info:
        Params({"n": "x"}, prefixed=False).int("n")
    assert info.value.messages == [f'error converting input for field "n": {INVALID_INT}']


def test_unknown_parameters_warning() -> None:
    params = Params({"data": {}, "x": 1, "b": 2})
    assert params.unknown(frozenset({"data"})) == ["b", "x"]
    assert ignored_warning(["b", "x"]) == "Endpoint ignored these unrecognized parameters: [b x]"


# -- bounds (issue 9): what OpenBao 2.7.2 answers past int64 -----------------------------------------

OVERFLOW = "multiplication of durations resulted in overflow, one operand may be too large"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (100000000000000000, OVERFLOW),
        (9223372037, OVERFLOW),
        ("9223372037", OVERFLOW),
        ("99999999999999d", OVERFLOW),
        ("106752d", OVERFLOW),
        ("9223372036854775807", OVERFLOW),
        ("-9223372037", OVERFLOW),
        ("99999999999999999999", 'time: invalid duration "99999999999999999999"'),
        ("2562048h", 'time: invalid duration "2562048h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
    ],
)
def test_duration_seconds_beyond_go(raw: object, message: str) -> None:
    for signed in (False, True):
        with pytest.raises(FieldError) as info:
            to_duration_seconds(raw, signed=signed)
        assert str(info.value) == message


def test_duration_seconds_at_the_edge() -> None:
    assert to_duration_seconds(9223372036) == 9223372036
    assert to_duration_seconds("106751d") == 106751 * 86400
    assert to_duration_seconds("2562047h") == 2562047 * 3600
    assert parse_go_duration_ns("-9223372036854775808ns") == -(2**63)
    assert parse_go_duration_ns("9223372036854775807ns") == 2**63 - 1


@pytest.mark.parametrize("text", ["9" * 5000, "0x" + "f" * 5000, "-" + "1" * 100, "0" * 5000 + "1" * 25])
def test_parse_go_int_long_text_is_out_of_range(text: str) -> None:
    with pytest.raises(FieldError, match="value out of range"):
        parse_go_int(text)
    with pytest.raises(FieldError):
        to_duration_seconds(text + "s")


def test_parse_go_int_keeps_leading_zeros_short() -> None:
    assert parse_go_int("0" * 5000) == 0
    assert parse_go_int("-0x" + "0" * 100 + "10") == -16
