"""The Flask application: blueprints, error handling, request limits."""

from __future__ import annotations

from flask import Flask
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from vaultd.api import auth_token, logical, sys_health, sys_init, sys_mounts, sys_policy, sys_seal, sys_vaultd
from vaultd.api.fastpath import FastPath
from vaultd.api.http import error, log_error, log_unexpected
from vaultd.core.core import Core
from vaultd.errors import VaultError

DEFAULT_MAX_REQUEST_SIZE = 32 * 1024 * 1024


def create_app(core: Core, *, max_request_size: int | None = DEFAULT_MAX_REQUEST_SIZE) -> Flask:
    """``max_request_size`` in bytes; None (or 0 or less) means no limit, as
    a negative ``max_request_size`` does in Vault's listener stanza."""
    app = Flask("vaultd")
    app.config["MAX_CONTENT_LENGTH"] = max_request_size if max_request_size and max_request_size > 0 else None
    app.extensions["vaultd.core"] = core
    # The system blueprints first; the logical catch-all takes the rest.
    blueprints = (sys_init.bp, sys_seal.bp, sys_health.bp, sys_mounts.bp, sys_policy.bp, sys_vaultd.bp, auth_token.bp)
    for blueprint in (*blueprints, logical.bp):
        app.register_blueprint(blueprint)
    app.extensions[logical.SYSTEM_ROUTES] = logical.system_routes(app.url_map)
    app.before_request(logical.refuse_options)
    app.wsgi_app = FastPath(app.wsgi_app, core)  # type: ignore[method-assign]

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
