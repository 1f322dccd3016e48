from __future__ import annotations

import pytest

from vaultd.durations import MAX_SECONDS, format_duration, go_duration_seconds, parse_duration
from vaultd.errors import BadRequest


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0), (90, 90), ("", 0), ("45", 45), ("1h", 3600), ("1h30m", 5400), ("768h", 2764800), ("1.5m", 90),
     ("2d", 172800), ("1500ms", 1), (60.0, 60)],
)
def test_parse_duration(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["bogus", "1x", "h", "-5", -1, True, [1], "1h 30m", 1.5])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(BadRequest):
        parse_duration(value, field="ttl")


def test_go_duration_seconds_keeps_fractions() -> None:
    assert go_duration_seconds("500ms") == pytest.approx(0.5)
    assert go_duration_seconds("1m0.25s") == pytest.approx(60.25)
    assert go_duration_seconds("soon") is None


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m1s"), (3600, "1h0m0s")])
def test_format_duration_is_go_style(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


# -- bounds: Go's time.Duration is int64 nanoseconds (issue 9) -----------------------------------

OVERFLOW = "multiplication of durations resulted in overflow, one operand may be too large"


@pytest.mark.parametrize("value", [9223372036, "9223372036", "106751d", "2562047h", 9223372036.0])
def test_parse_duration_takes_the_largest_go_durations(value: object) -> None:
    assert parse_duration(value) <= MAX_SECONDS == 9223372036


@pytest.mark.parametrize(
    ("value", "message"),
    [(9223372037, OVERFLOW), ("9223372037", OVERFLOW), ("106752d", OVERFLOW), ("99999999999999d", OVERFLOW),
     (10**30, OVERFLOW), (1e300, OVERFLOW), ("2562048h", 'time: invalid duration "2562048h"'),
     ("9" * 5000 + "h", None), ("٣", None), (float("nan"), None), (float("inf"), None)],
)
def test_parse_duration_refuses_what_go_cannot_hold(value: object, message: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        parse_duration(value, field="ttl")
    if message is not None:
        assert err.value.messages == [message]


def test_go_duration_seconds_is_none_past_int64_nanoseconds() -> None:
    assert go_duration_seconds("2562047h") == 2562047 * 3600
    assert go_duration_seconds("2562048h") is None
    assert go_duration_seconds("9" * 400 + "s") is None
