"""The ``userpass`` auth method: users with a bcrypt-hashed password.

Passwords are hashed with bcrypt (cost 10, as Vault) and only the hash is
stored, through the barrier.  A login for a user that does not exist checks
the password against a fixed hash all the same, so it costs what a wrong
password costs and the answer's timing does not tell which users exist.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import bcrypt

from vaultd.auth.tokenparams import TOKEN_FIELDS, TokenParams, address_in
from vaultd.engines.base import MountSettings
from vaultd.engines.framework import GENERIC_NAME, FieldData, FieldSpec, FrameworkBackend, PathSpec
from vaultd.errors import BadRequest, NotFound
from vaultd.logical import Operation, Request, Response
from vaultd.storage.base import Storage

BCRYPT_COST = 10
MAX_PASSWORD_BYTES = 72
"""bcrypt reads no further; Go's bcrypt (Vault) refuses longer passwords."""
_INVALID = "invalid username or password"
_USER = rf"(?P<username>{GENERIC_NAME})"

_dummy_lock = threading.Lock()
_dummy_hash: bytes | None = None


def _dummy() -> bytes:
    """A hash to check unknown users against: made once per process, at the
    same cost as real ones."""
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = bcrypt.hashpw(b"vaultd-no-such-user", bcrypt.gensalt(BCRYPT_COST))
        return _dummy_hash


def _hash(password: str) -> str:
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"password cannot be longer than {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt(BCRYPT_COST)).decode("ascii")


class UserpassBackend(FrameworkBackend):
    def __init__(self, storage: Storage, mount: MountSettings) -> None:
        user = {"username": FieldSpec("string")}
        super().__init__(
            storage,
            mount,
            [
                PathSpec(r"users/?", operations={Operation.LIST: self._list}),
                PathSpec(
                    rf"users/{_USER}",
                    fields={**user, "password": FieldSpec("string"), **TOKEN_FIELDS},
                    operations={
                        Operation.READ: self._read,
                        Operation.CREATE: self._write,
                        Operation.UPDATE: self._write,
                        Operation.DELETE: self._delete,
                    },
                    exists=lambda req, data: self._load(data.get("username")) is not None,
                ),
                PathSpec(
                    rf"users/{_USER}/password",
                    fields={**user, "password": FieldSpec("string")},
                    operations={Operation.UPDATE: self._set_password},
                ),
                PathSpec(
                    rf"users/{_USER}/policies",
                    fields={**user, "policies": FieldSpec("lower_strings"),
                            "token_policies": FieldSpec("lower_strings")},
                    operations={Operation.UPDATE: self._set_policies},
                ),
                PathSpec(
                    rf"login/{_USER}",
                    fields={**user, "password": FieldSpec("string")},
                    operations={Operation.UPDATE: self._login},
                    unauthenticated=True,
                ),
            ],
        )

    # -- storage -----------------------------------------------------------------

    @staticmethod
    def _key(username: str) -> str:
        return f"user/{username.lower()}"

    def _load(self, username: str) -> dict[str, Any] | None:
        raw = self.storage.get(self._key(username))
        return None if raw is None else json.loads(raw)

    def _save(self, username: str, user: dict[str, Any]) -> None:
        self.storage.put(self._key(username), json.dumps(user).encode())

    # -- handlers ----------------------------------------------------------------

    def _list(self, request: Request, data: FieldData) -> Response:
        return Response(data={"keys": self.storage.list("user/")})

    def _read(self, request: Request, data: FieldData) -> Response:
        user = self._load(data.get("username"))
        if user is None:
            raise NotFound()
        return Response(data=TokenParams.load(user).describe())

    def _write(self, request: Request, data: FieldData) -> None:
        username = data.get("username")
        with self.storage.lock(self._key(username)):
            user = self._load(username)
            creating = user is None
            params = TokenParams() if user is None else TokenParams.load(user)
            params.update(data)
            password = data.get("password")
            if creating and not password:
                raise BadRequest("missing password")
            stored = {**params.describe(), "password_hash": (user or {}).get("password_hash", "")}
            if password:
                stored["password_hash"] = _hash(password)
            self._save(username, stored)

    def _delete(self, request: Request, data: FieldData) -> None:
        self.storage.delete(self._key(data.get("username")))

    def _set_password(self, request: Request, data: FieldData) -> None:
        username, password = data.get("username"), data.get("password")
        if not password:
            raise BadRequest("missing password")
        with self.storage.lock(self._key(username)):
            user = self._load(username)
            if user is None:
                raise BadRequest("username does not exist")
            user["password_hash"] = _hash(password)
            self._save(username, user)

    def _set_policies(self, request: Request, data: FieldData) -> None:
        username = data.get("username")
        with self.storage.lock(self._key(username)):
            user = self._load(username)
            if user is None:
                raise BadRequest("username does not exist")
            name = "token_policies" if data.given("token_policies") else "policies"
            user["token_policies"] = data.get(name)
            self._save(username, user)

    def _login(self, request: Request, data: FieldData) -> Response:
        username = data.get("username").lower()
        password = data.get("password").encode("utf-8")
        user = self._load(username)
        stored = user.get("password_hash", "").encode("ascii") if user else b""
        candidate = password if len(password) <= MAX_PASSWORD_BYTES else b""
        ok = bcrypt.checkpw(candidate, stored if stored else _dummy())
        if user is None or not stored or not ok or not candidate:
            raise BadRequest(_INVALID)
        params = TokenParams.load(user)
        if not address_in(request.remote_addr, params.token_bound_cidrs):
            raise BadRequest("login request originated from invalid CIDR")
        auth = params.auth(display_name=username, metadata={"username": username})
        return Response(login=auth)


def create_userpass(storage: Storage, mount: MountSettings) -> UserpassBackend:
    return UserpassBackend(storage, mount)
