"""The Flask application: blueprints, error handling, request limits."""

from __future__ import annotations

from flask import Flask, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from vaultd.api import (
    auth_token,
    logical,
    sys_audit,
    sys_auth,
    sys_generate_root,
    sys_ha,
    sys_health,
    sys_init,
    sys_leases,
    sys_metrics,
    sys_mounts,
    sys_policy,
    sys_rekey,
    sys_remount,
    sys_seal,
    sys_snapshot,
    sys_vaultd,
    sys_wrapping,
)
from vaultd.api.fastpath import FastPath
from vaultd.api.http import add_ignored_warning, error, log_error, log_unexpected
from vaultd.core.core import Core, client_address
from vaultd.errors import VaultError
from vaultd.metrics import RequestMetrics

DEFAULT_MAX_REQUEST_SIZE = 32 * 1024 * 1024


def _note_client_address() -> None:
    """For tokens bound to CIDR blocks: the core checks them on every path."""
    client_address.set(request.remote_addr or "")


def create_app(core: Core, *, max_request_size: int | None = DEFAULT_MAX_REQUEST_SIZE) -> Flask:
    """``max_request_size`` in bytes; None (or 0 or less) means no limit, as
    a negative ``max_request_size`` does in Vault's listener stanza."""
    app = Flask("vaultd")
    app.config["MAX_CONTENT_LENGTH"] = max_request_size if max_request_size and max_request_size > 0 else None
    app.extensions["vaultd.core"] = core
    # The system blueprints first; the logical catch-all takes the rest.
    blueprints = (sys_init.bp, sys_seal.bp, sys_health.bp, sys_mounts.bp, sys_auth.bp, sys_policy.bp, sys_remount.bp,
                  sys_wrapping.bp, sys_leases.bp, sys_vaultd.bp, sys_snapshot.bp, sys_audit.bp, sys_generate_root.bp,
                  sys_rekey.bp, sys_metrics.bp, sys_ha.bp, auth_token.bp)
    for blueprint in (*blueprints, logical.bp):
        app.register_blueprint(blueprint)
    app.extensions[logical.SYSTEM_ROUTES] = logical.system_routes(app.url_map)
    app.before_request(logical.refuse_options)
    app.before_request(_note_client_address)
    app.before_request(sys_wrapping.read_wrap_ttl)
    app.after_request(sys_wrapping.wrap_response)
    app.teardown_request(lambda _exc: sys_wrapping.requested_wrap_ttl.set(None))
    app.after_request(add_ignored_warning)
    # The fast path also audits (vaultd.api.auditing) what it or Flask answers.
    app.wsgi_app = FastPath(app.wsgi_app, core, max_request_size=app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    if core.settings.ha_enabled:
        # A standby redirects before anything else reads the request.
        app.wsgi_app = sys_ha.StandbyGate(app.wsgi_app, core.shared)  # type: ignore[method-assign]
    # Outermost of all, so that every answer is counted, whoever gave it.
    app.wsgi_app = RequestMetrics(app.wsgi_app)  # type: ignore[method-assign]

    @app.errorhandler(VaultError)
    def vault_error(exc: VaultError) -> ResponseReturnValue:
        log_error(exc)
        return error(exc.status, exc.messages)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        code = exc.code or 500
        messages = {
            404: "unsupported path",
            405: "unsupported operation",
            413: "request body too large",
        }
        return error(code, [messages.get(code, exc.name)])

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> ResponseReturnValue:
        log_unexpected(exc)
        return error(500, ["internal error"])

    return app
