"""What the fuzz tests share: hypothesis profiles, a real core behind the
Flask app, and the property every request must keep.

The property (issue 9): whatever a client sends, the answer is not a 5xx,
nothing is logged at ERROR (a traceback, an "internal error"), and an answer
of 4xx left storage and the seal state exactly as they were.

Profiles, chosen with ``HYPOTHESIS_PROFILE``:

- ``bounded`` (the default, what ``make test`` runs): few examples, a fixed
  seed and no example database, so the run is quick and the same every time;
- ``fuzz`` (``make fuzz``): many examples, a fresh seed each run, and the
  example database (``.hypothesis/``) so a failure found once is replayed
  first the next time.

Every failure ever found is kept as an ``@example`` on its test, so the
bounded run checks it for good.
"""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from vaultd.api.app import create_app
from vaultd.core.core import Core, CoreSettings
from vaultd.core.seal_state import SharedSealState
from vaultd.server import dev_bootstrap
from vaultd.storage.file import FileStorage

settings.register_profile(
    "bounded",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any logger, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        return out


class Harness:
    """A core over file storage in ``directory``, served by the real Flask
    app (fast path included) through Werkzeug's test client: the code a
    gunicorn worker runs, without sockets, so thousands of requests take
    seconds."""

    def __init__(self, directory: Path, *, initialised: bool = True) -> None:
        self.data = directory
        self.core = Core(
            FileStorage(str(directory)),
            SharedSealState.create(lock_memory=False),
            CoreSettings(storage_type="file"),
        )
        self.root = ""
        if initialised:
            _, self.root = dev_bootstrap(self.core)
        self.client: FlaskClient = create_app(self.core).test_client()

    def snapshot(self) -> dict[str, Any]:
        """Every stored file (ciphertext: any change shows) and the seal state."""
        files: dict[str, bytes] = {}
        for folder, dirs, names in os.walk(self.data):
            dirs[:] = [d for d in dirs if d != ".locks"]
            for name in names:
                if not name.startswith("."):
                    path = Path(folder, name)
                    files[str(path.relative_to(self.data))] = path.read_bytes()
        status = self.core.lifecycle.seal_status()
        return {"files": files, "seal": {k: status.get(k) for k in ("sealed", "progress", "nonce", "initialized")}}

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        token: str | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["X-Vault-Token"] = token
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        return self.client.open(
            "/v1/" + path, method=method, data=body, headers=all_headers, query_string=query or None
        )


def check(harness: Harness, errors: ErrorLog, method: str, path: str, **kwargs: Any) -> TestResponse:
    """Send one request and assert the property; the response for more checks."""
    errors.take()
    before = harness.snapshot()
    response = harness.send(method, path, **kwargs)
    status = response.status_code
    logged = errors.take()
    text = response.get_data(as_text=True)
    # sys/health answers with the status its query asks for (sealedcode=550
    # is the client's choice), always with its own body, never an error.
    health = path == "sys/health" and (method == "HEAD" or '"initialized"' in text)
    if not health:
        sealed = status == 503 and "sealed" in text.lower()
        assert status < 500 or sealed, f"{method} {path!r}: {status} {text[:300]}"
        if status >= 400 and method != "HEAD" and response.mimetype == "application/json":
            # Vault's error body, or (KV v2's 404 for a path it does not
            # serve, as in Vault) an envelope whose warnings say why.
            body = response.get_json()
            assert isinstance(body.get("errors"), list) or body.get("warnings"), text[:300]
    assert not logged, f"{method} {path!r} logged errors: {logged}"
    if 400 <= status < 600:
        assert harness.snapshot() == before, f"{method} {path!r} answered {status} but changed state"
    return response


def installed_error_log() -> Iterator[ErrorLog]:
    """Generator for a module fixture: the handler on the root logger."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# -- strategies -------------------------------------------------------------------------------------

INT64 = 2**63
edge_ints = st.sampled_from(
    [0, 1, -1, 2**31, 2**32, 2**32 + 1, INT64 - 1, INT64, -INT64, -INT64 - 1, 9223372036, 9223372037, 10**17,
     10**30, 10**4000]
)
any_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.integers(0, 0x10FFFF).map(chr), max_size=12).map("".join),
)
"""Any code points, lone surrogates included (json.dumps escapes them);
built from integers because ``st.characters``' way to allow surrogates
differs between hypothesis releases (bookworm has 6.67)."""
any_ints = st.one_of(st.integers(), edge_ints)
any_floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), any_ints, any_floats, any_text)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
)
durations = st.one_of(
    any_ints,
    any_floats,
    st.from_regex(r"\A[+-]?[0-9]{0,22}(\.[0-9]{0,12})?(ns|us|µs|ms|s|m|h|d|)\Z", fullmatch=True),
    st.from_regex(r"\A([0-9]{1,8}(h|m|s|ms)){1,4}\Z", fullmatch=True),
    st.sampled_from(["99999999999999d", "106752d", "2562048h", "9223372036854775807", "1e3", "-0", "+5s", ""]),
    any_text,
)
"""What clients send as TTLs: numbers, Go-style strings at the edges, junk."""


def dumps(value: Any) -> bytes:
    """JSON as a client may send it: NaN/Infinity literals and surrogate
    escapes are kept (json.dumps writes both), and ints of any size."""
    try:
        return json.dumps(value).encode()
    except ValueError:  # an int beyond str()'s digit limit
        return b'{"n": ' + b"9" * 5000 + b"}"


def nested(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


raw_bodies = st.one_of(
    st.binary(max_size=60),
    st.builds(nested, st.sampled_from([1, 499, 500, 501, 999, 1000, 5000, 100_000])),
    st.sampled_from([b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e400}', b'{"a": "\\ud800"}',
                     b'{"\\udfff": 1}', b"\xff\xfe{}", b'{"a": 1', b"[]", b"null", b"\x00{}"]),
)

segment_chars = string.ascii_letters + string.digits + "-._~%é€😀 "
long_paths = st.builds(
    lambda segment, repeat: "/".join([segment] * repeat),
    st.text(st.sampled_from(segment_chars), min_size=1, max_size=300),
    st.integers(1, 3),
)
