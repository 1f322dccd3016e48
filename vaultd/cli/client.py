"""The one place vaultctl talks HTTP.

vaultctl must work against vaultd, Vault and OpenBao alike, so it knows the
server only through the HTTP API and imports nothing of the server.  Errors
keep Vault's wording (``Error making API request. ... Code: 400. Errors:``)
because operators paste them into searches and runbooks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import requests

DEFAULT_ADDR = "https://127.0.0.1:8200"
_TIMEOUT = 60
_MAX_RAW = 2000


class ClientError(Exception):
    """A request did not produce a usable answer."""


class ApiError(ClientError):
    """The server answered with an error status."""

    def __init__(self, method: str, url: str, status: int, errors: list[str] | None, raw: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.errors = errors
        self.raw = raw
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"Error making API request.\n\nURL: {self.method} {self.url}\nCode: {self.status}. "
        if self.errors is None:
            return text + "Raw Message:\n\n" + self.raw[:_MAX_RAW]
        return text + "Errors:\n\n" + "\n".join(f"* {e}" for e in self.errors)


class TransportError(ClientError):
    """No HTTP answer at all: refused, TLS failure, timeout."""


@dataclass
class Response:
    status: int
    body: dict | None


class Client:
    """A Vault API client bound to one address, token and TLS setting.

    Redirects are not followed: Vault's token header would be replayed to
    wherever the redirect points.
    """

    def __init__(self, address: str, token: str | None, verify: bool | str = True) -> None:
        self.address = address.rstrip("/")
        self.token = token
        self.verify = verify
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return f"{self.address}/v1/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        params: dict[str, str] | None = None,
        token: str | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> Response:
        """Send one request; raise :class:`ApiError` on an error status not in
        ``ok_statuses``.  ``token`` overrides the client's token."""
        url = self.url(path)
        headers = {}
        use_token = token if token is not None else self.token
        if use_token:
            headers["X-Vault-Token"] = use_token
        shown = url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                data=None if body is None else json.dumps(body),
                headers=headers,
                timeout=_TIMEOUT,
                allow_redirects=False,
                # Per request: a session-level setting loses to REQUESTS_CA_BUNDLE.
                verify=self.verify,
            )
        except requests.RequestException as exc:
            raise TransportError(f'{method.capitalize()} "{shown}": {_reason(exc)}') from None
        parsed: object = None
        if resp.content:
            try:
                parsed = resp.json()
            except ValueError:
                parsed = None
        if resp.status_code >= 300 and resp.status_code not in ok_statuses:
            errors = parsed.get("errors") if isinstance(parsed, dict) else None
            if not isinstance(errors, list):
                errors = None
            raise ApiError(method, shown, resp.status_code, errors, resp.text)
        return Response(resp.status_code, parsed if isinstance(parsed, dict) else None)


def _reason(exc: requests.RequestException) -> str:
    """The useful end of a requests/urllib3 error chain."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"\[SSL[^\]]*\] ([^'\")(]+)", r"Read timed out"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip() if match.groups() else match.group(0)
    return f"{type(exc).__name__}: {text}"
