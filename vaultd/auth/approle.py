"""The ``approle`` auth method: machine logins with a role ID and a secret ID.

A role's ``role_id`` is an identifier; its secret IDs are credentials, made
by someone allowed to (and best handed over response-wrapped), each with its
own TTL, use count and CIDR binding.  Secret IDs and their accessors are
stored only as HMACs (keyed per mount), so the storage never holds one that
could be replayed.  A secret ID with uses left is spent under a lock, one use
per login, however many workers race for it, and its last use deletes it
together with its accessor in one transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

from vaultd.auth.tokenparams import TOKEN_FIELDS, TokenParams, address_in, check_cidrs
from vaultd.durations import rfc3339
from vaultd.engines.base import MountSettings
from vaultd.engines.framework import GENERIC_NAME, FieldData, FieldSpec, FrameworkBackend, PathSpec, require
from vaultd.errors import BadRequest, NotFound
from vaultd.logical import Operation, Request, Response
from vaultd.storage.base import Delete, Put, Storage

_INVALID = "invalid role or secret ID"
_ROLE = rf"role/(?P<role_name>{GENERIC_NAME})"
_ROLE_FIELDS: dict[str, FieldSpec] = {
    "role_name": FieldSpec("string"),
    "bind_secret_id": FieldSpec("bool", default=True),
    "secret_id_bound_cidrs": FieldSpec("strings"),
    "secret_id_num_uses": FieldSpec("int"),
    "secret_id_ttl": FieldSpec("duration"),
    "local_secret_ids": FieldSpec("bool"),
    "role_id": FieldSpec("string"),
    **TOKEN_FIELDS,
}
_SECRET_ID_FIELDS: dict[str, FieldSpec] = {
    "role_name": FieldSpec("string"),
    "metadata": FieldSpec("string"),
    "cidr_list": FieldSpec("strings"),
    "token_bound_cidrs": FieldSpec("strings"),
    "ttl": FieldSpec("duration"),
    "num_uses": FieldSpec("int"),
}



def _metadata(raw: Any) -> dict[str, str]:
    """``metadata`` is a JSON object of strings, sent as a string (Vault)."""
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise BadRequest("failed to parse metadata: not a JSON object") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest("failed to parse metadata: must be a JSON object of strings")
    return {str(k): v for k, v in value.items()}


class AppRoleBackend(FrameworkBackend):
    def __init__(self, storage: Storage, mount: MountSettings) -> None:
        role = {"role_name": FieldSpec("string")}
        by_secret = {**role, "secret_id": FieldSpec("string")}
        by_accessor = {**role, "secret_id_accessor": FieldSpec("string")}
        super().__init__(
            storage,
            mount,
            [
                PathSpec(r"role/?", operations={Operation.LIST: self._list_roles}),
                PathSpec(
                    _ROLE,
                    fields=_ROLE_FIELDS,
                    operations={
                        Operation.READ: self._read_role,
                        Operation.CREATE: self._write_role,
                        Operation.UPDATE: self._write_role,
                        Operation.DELETE: self._delete_role,
                    },
                    exists=lambda req, data: self._role(data.get("role_name")) is not None,
                ),
                PathSpec(
                    rf"{_ROLE}/role-id",
                    fields={**role, "role_id": FieldSpec("string")},
                    operations={Operation.READ: self._read_role_id, Operation.UPDATE: self._set_role_id},
                ),
                PathSpec(
                    rf"{_ROLE}/secret-id/?",
                    fields=_SECRET_ID_FIELDS,
                    operations={Operation.UPDATE: self._generate, Operation.LIST: self._list_accessors},
                ),
                PathSpec(
                    rf"{_ROLE}/custom-secret-id",
                    fields={**_SECRET_ID_FIELDS, "secret_id": FieldSpec("string")},
                    operations={Operation.UPDATE: self._custom},
                ),
                PathSpec(rf"{_ROLE}/secret-id/lookup/?", fields=by_secret,
                         operations={Operation.UPDATE: self._lookup}),
                PathSpec(rf"{_ROLE}/secret-id/destroy/?", fields=by_secret,
                         operations={Operation.UPDATE: self._destroy, Operation.DELETE: self._destroy}),
                PathSpec(rf"{_ROLE}/secret-id-accessor/lookup/?", fields=by_accessor,
                         operations={Operation.UPDATE: self._lookup_accessor}),
                PathSpec(rf"{_ROLE}/secret-id-accessor/destroy/?", fields=by_accessor,
                         operations={Operation.UPDATE: self._destroy_accessor,
                                     Operation.DELETE: self._destroy_accessor}),
                PathSpec(r"tidy/secret-id", operations={Operation.UPDATE: self._tidy}),
                PathSpec(
                    r"login",
                    fields={"role_id": FieldSpec("string"), "secret_id": FieldSpec("string")},
                    operations={Operation.UPDATE: self._login},
                    unauthenticated=True,
                ),
            ],
        )

    # -- keys ----------------------------------------------------------------------

    def _salt(self) -> bytes:
        salt = self.storage.get("salt")
        if salt is None:
            with self.storage.lock("salt"):
                salt = self.storage.get("salt")
                if salt is None:
                    salt = secrets.token_bytes(32)
                    self.storage.put("salt", salt)
        return salt

    def _mac(self, value: str) -> str:
        return hmac.new(self._salt(), value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def _secret_key(self, role_name: str, secret_id: str) -> str:
        return f"secret_id/{self._mac('role:' + role_name)}/{self._mac('secret:' + secret_id)}"

    def _accessor_key(self, accessor: str) -> str:
        return f"accessor/{self._mac('accessor:' + accessor)}"

    def _role(self, name: str) -> dict[str, Any] | None:
        raw = self.storage.get(f"role/{name}")
        return None if raw is None else json.loads(raw)

    def _need_role(self, name: str) -> dict[str, Any]:
        role = self._role(name)
        if role is None:
            raise BadRequest(f'role "{name}" does not exist')
        return role

    # -- roles ---------------------------------------------------------------------

    def _list_roles(self, request: Request, data: FieldData) -> Response:
        return Response(data={"keys": self.storage.list("role/")})

    def _read_role(self, request: Request, data: FieldData) -> Response:
        role = self._role(data.get("role_name"))
        if role is None:
            raise NotFound()
        out = {k: role[k] for k in ("bind_secret_id", "secret_id_bound_cidrs", "secret_id_num_uses",
                                    "secret_id_ttl", "local_secret_ids")}
        out.update(TokenParams.load(role).describe())
        return Response(data=out)

    def _write_role(self, request: Request, data: FieldData) -> None:
        name = data.get("role_name")
        self._salt()  # made before the roles lock: one lock at a time
        with self.storage.lock("roles"):
            role = self._role(name)
            creating = role is None
            role = role or {"role_id": "", "bind_secret_id": True, "secret_id_bound_cidrs": [],
                            "secret_id_num_uses": 0, "secret_id_ttl": 0, "local_secret_ids": False}
            for key in ("bind_secret_id", "secret_id_bound_cidrs", "secret_id_num_uses", "secret_id_ttl",
                        "local_secret_ids"):
                if data.given(key):
                    role[key] = data.get(key)
            if role["secret_id_num_uses"] < 0:
                raise BadRequest("secret_id_num_uses cannot be negative")
            check_cidrs(role["secret_id_bound_cidrs"], "secret_id_bound_cidrs")
            params = TokenParams.load(role)
            params.update(data)
            role.update(params.describe())
            if not role["bind_secret_id"] and not role["secret_id_bound_cidrs"] and not params.token_bound_cidrs:
                raise BadRequest("at least one constraint should be enabled on the role")
            ops: list[Put | Delete] = []
            if creating or (data.given("role_id") and data.get("role_id") != role["role_id"]):
                new_id = data.get("role_id") or str(uuid.uuid4())
                ops += self._role_id_ops(name, role["role_id"], new_id)
                role["role_id"] = new_id
            ops.append(Put(f"role/{name}", json.dumps(role).encode()))
            self.storage.transaction(ops)

    def _role_id_ops(self, name: str, old: str, new: str) -> list[Put | Delete]:
        index = f"role_id/{self._mac('role_id:' + new)}"
        holder = self.storage.get(index)
        if holder is not None and holder.decode() != name:
            raise BadRequest("role_id already in use")
        ops: list[Put | Delete] = [Put(index, name.encode())]
        if old:
            ops.insert(0, Delete(f"role_id/{self._mac('role_id:' + old)}"))
        return ops

    def _delete_role(self, request: Request, data: FieldData) -> None:
        name = data.get("role_name")
        self._salt()
        with self.storage.lock("roles"):
            role = self._role(name)
            if role is None:
                return
            ops: list[Put | Delete] = []
            for entry_key, entry in self._secret_entries(name):
                ops += [Delete(self._accessor_key(entry["secret_id_accessor"])), Delete(entry_key)]
            ops += [Delete(f"role_id/{self._mac('role_id:' + role['role_id'])}"), Delete(f"role/{name}")]
            self.storage.transaction(ops)

    def _read_role_id(self, request: Request, data: FieldData) -> Response:
        role = self._role(data.get("role_name"))
        if role is None:
            raise NotFound()
        return Response(data={"role_id": role["role_id"]})

    def _set_role_id(self, request: Request, data: FieldData) -> None:
        name = data.get("role_name")
        new = require(data, "role_id", "missing role_id")
        self._salt()
        with self.storage.lock("roles"):
            role = self._need_role(name)
            ops = self._role_id_ops(name, role["role_id"], new)
            role["role_id"] = new
            self.storage.transaction([*ops, Put(f"role/{name}", json.dumps(role).encode())])

    # -- secret IDs ----------------------------------------------------------------

    def _generate(self, request: Request, data: FieldData) -> Response:
        return self._issue(data, str(uuid.uuid4()))

    def _custom(self, request: Request, data: FieldData) -> Response:
        return self._issue(data, require(data, "secret_id", "missing secret_id"))

    def _issue(self, data: FieldData, secret_id: str) -> Response:
        name = data.get("role_name")
        role = self._need_role(name)
        if not role["bind_secret_id"]:
            raise BadRequest("bind_secret_id is not set on the role")
        cidrs = check_cidrs(data.get("cidr_list"), "cidr_list")
        token_cidrs = check_cidrs(data.get("token_bound_cidrs"), "token_bound_cidrs")
        role_cidrs = role["secret_id_bound_cidrs"]
        if role_cidrs and cidrs and not all(address_in(c.split("/")[0], role_cidrs) for c in cidrs):
            raise BadRequest("failed to verify the CIDR restrictions set on the secret ID: "
                             "CIDR blocks on the secret ID are not a subset of that of role's")
        ttl, num_uses = role["secret_id_ttl"], role["secret_id_num_uses"]
        if data.given("ttl"):
            asked = data.get("ttl")
            if ttl and asked > ttl:
                raise BadRequest("ttl cannot be longer than the role's secret_id_ttl")
            ttl = asked or ttl
        if data.given("num_uses"):
            asked = data.get("num_uses")
            if asked < 0:
                raise BadRequest("num_uses cannot be negative")
            if num_uses and (asked == 0 or asked > num_uses):
                raise BadRequest("num_uses cannot be higher than the role's secret_id_num_uses")
            num_uses = asked
        now = time.time()
        accessor = str(uuid.uuid4())
        entry = {
            "secret_id_accessor": accessor,
            "creation_time": now,
            "last_updated_time": now,
            "expiration_time": now + ttl if ttl else 0,
            "secret_id_ttl": ttl,
            "secret_id_num_uses": num_uses,
            "cidr_list": cidrs,
            "token_bound_cidrs": token_cidrs,
            "metadata": _metadata(data.get("metadata") or None),
        }
        key = self._secret_key(name, secret_id)
        with self.storage.lock(key):
            if self.storage.get(key) is not None:
                raise BadRequest("secret_id is already registered")
            self.storage.transaction([
                Put(self._accessor_key(accessor), json.dumps({"role": name, "key": key}).encode()),
                Put(key, json.dumps(entry).encode()),
            ])
        return Response(data={"secret_id": secret_id, "secret_id_accessor": accessor,
                              "secret_id_ttl": ttl, "secret_id_num_uses": num_uses})

    def _secret_entries(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        folder = f"secret_id/{self._mac('role:' + name)}/"
        out = []
        for child in self.storage.list(folder):
            raw = self.storage.get(folder + child)
            if raw is not None:
                out.append((folder + child, json.loads(raw)))
        return out

    def _list_accessors(self, request: Request, data: FieldData) -> Response:
        self._need_role(data.get("role_name"))
        keys = sorted(entry["secret_id_accessor"] for _, entry in self._secret_entries(data.get("role_name")))
        if not keys:
            raise NotFound()
        return Response(data={"keys": keys})

    @staticmethod
    def _describe(entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "cidr_list": entry["cidr_list"],
            "creation_time": rfc3339(entry["creation_time"]),
            "expiration_time": rfc3339(entry["expiration_time"]) if entry["expiration_time"] else
            "0001-01-01T00:00:00Z",
            "last_updated_time": rfc3339(entry["last_updated_time"]),
            "metadata": entry["metadata"],
            "secret_id_accessor": entry["secret_id_accessor"],
            "secret_id_num_uses": entry["secret_id_num_uses"],
            "secret_id_ttl": entry["secret_id_ttl"],
            "token_bound_cidrs": entry["token_bound_cidrs"],
        }

    def _by_accessor(self, name: str, accessor: str) -> tuple[str, dict[str, Any]] | None:
        raw = self.storage.get(self._accessor_key(accessor))
        if raw is None:
            return None
        index = json.loads(raw)
        if index["role"] != name:
            return None
        entry = self.storage.get(index["key"])
        return None if entry is None else (index["key"], json.loads(entry))

    def _lookup(self, request: Request, data: FieldData) -> Response | None:
        name = data.get("role_name")
        self._need_role(name)
        raw = self.storage.get(self._secret_key(name, require(data, "secret_id", "missing secret_id")))
        return None if raw is None else Response(data=self._describe(json.loads(raw)))

    def _lookup_accessor(self, request: Request, data: FieldData) -> Response:
        name = data.get("role_name")
        self._need_role(name)
        found = self._by_accessor(name, require(data, "secret_id_accessor", "missing secret_id_accessor"))
        if found is None:
            raise NotFound("failed to find accessor entry for secret_id_accessor")
        return Response(data=self._describe(found[1]))

    def _remove(self, key: str, entry: dict[str, Any]) -> None:
        self.storage.transaction([Delete(self._accessor_key(entry["secret_id_accessor"])), Delete(key)])

    def _destroy(self, request: Request, data: FieldData) -> None:
        name = data.get("role_name")
        key = self._secret_key(name, require(data, "secret_id", "missing secret_id"))
        with self.storage.lock(key):
            raw = self.storage.get(key)
            if raw is not None:
                self._remove(key, json.loads(raw))

    def _destroy_accessor(self, request: Request, data: FieldData) -> None:
        name = data.get("role_name")
        found = self._by_accessor(name, require(data, "secret_id_accessor", "missing secret_id_accessor"))
        if found is None:
            raise BadRequest("failed to find accessor entry for secret_id_accessor")
        with self.storage.lock(found[0]):
            self._remove(*found)

    def _tidy(self, request: Request, data: FieldData) -> Response:
        now = time.time()
        for name in self.storage.list("role/"):
            for key, entry in self._secret_entries(name):
                if entry["expiration_time"] and entry["expiration_time"] <= now:
                    with self.storage.lock(key):
                        self._remove(key, entry)
        return Response(data={}, status=202, warnings=[
            "Tidy operation successfully started. Any information from the operation will be printed "
            "to Vault's server logs."])

    # -- login ---------------------------------------------------------------------

    def _login(self, request: Request, data: FieldData) -> Response:
        role_id = require(data, "role_id", "missing role_id")
        holder = self.storage.get(f"role_id/{self._mac('role_id:' + role_id)}")
        role = self._role(holder.decode()) if holder is not None else None
        if role is None or not hmac.compare_digest(role["role_id"], role_id):
            raise BadRequest(_INVALID)
        name = holder.decode()  # type: ignore[union-attr]
        addr = request.remote_addr
        if role["secret_id_bound_cidrs"] and not address_in(addr, role["secret_id_bound_cidrs"]):
            raise BadRequest(f'source address "{addr}" unauthorized by CIDR restrictions on the role')
        metadata: dict[str, str] = {}
        token_cidrs: list[str] = []
        if role["bind_secret_id"]:
            entry = self._spend(name, require(data, "secret_id", "missing secret_id"), addr)
            metadata = dict(entry["metadata"])
            token_cidrs = entry["token_bound_cidrs"]
        metadata["role_name"] = name
        params = TokenParams.load(role)
        if token_cidrs:
            params.token_bound_cidrs = token_cidrs
        return Response(login=params.auth(display_name=name, metadata=metadata))

    def _spend(self, name: str, secret_id: str, addr: str) -> dict[str, Any]:
        """Check a secret ID and count one use of it, under its lock."""
        key = self._secret_key(name, secret_id)
        with self.storage.lock(key):
            raw = self.storage.get(key)
            if raw is None:
                raise BadRequest(_INVALID)
            entry = json.loads(raw)
            if entry["expiration_time"] and entry["expiration_time"] <= time.time():
                self._remove(key, entry)
                raise BadRequest(_INVALID)
            if entry["cidr_list"] and not address_in(addr, entry["cidr_list"]):
                raise BadRequest(f'source address "{addr}" unauthorized through CIDR restrictions on the secret ID')
            uses = entry["secret_id_num_uses"]
            if uses == 1:
                self._remove(key, entry)
            elif uses > 1:
                entry["secret_id_num_uses"] = uses - 1
                entry["last_updated_time"] = time.time()
                self.storage.put(key, json.dumps(entry).encode())
        return entry


def create_approle(storage: Storage, mount: MountSettings) -> AppRoleBackend:
    return AppRoleBackend(storage, mount)
