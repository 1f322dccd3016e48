"""``sys/remount`` and ``sys/remount/status``: move a secrets engine or an
auth method to another path, keeping its data (``bao secrets move``,
``bao auth move``)."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from vaultd.api.http import Field, client_token, core, envelope, fields, json_body, system_backend_gate
from vaultd.core.router import normalise_mount_path
from vaultd.errors import BadRequest, NotFound

bp = Blueprint("sys_remount", __name__)
bp.before_request(system_backend_gate)


def _path(value: str, name: str) -> str:
    if value != value.rstrip():
        raise BadRequest(f"'{name}' path cannot contain trailing whitespace")
    return normalise_mount_path(value)


@bp.route("/v1/sys/remount", methods=["POST", "PUT"])
def remount() -> ResponseReturnValue:
    body = fields(json_body(), {"from": Field(str, required=True), "to": Field(str, required=True)})
    migration = core().remount(client_token(), _path(body["from"], "from"), _path(body["to"], "to"))
    return envelope(
        {"migration_id": migration},
        warnings=["Mount move has been queued. Progress will be reported in Vault's server log, "
                  "tagged with the returned migration_id"],
    )


@bp.get("/v1/sys/remount/status/<migration>")
def status(migration: str) -> ResponseReturnValue:
    record = core().remount_status(client_token(), migration)
    if record is None:
        raise NotFound()
    return envelope({"migration_id": migration, "migration_info": record})
