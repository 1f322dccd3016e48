"""The ``awskms`` auto seal: the KEK wrapped by an AWS KMS symmetric key.

The daemon calls :meth:`AwsKmsSeal.describe_key` and :meth:`AwsKmsSeal.wrap`
(``kms:DescribeKey``, ``kms:Encrypt``) only when it makes a new KEK; the
unsealer agent calls :meth:`AwsKmsSeal.unwrap` (``kms:Decrypt``) at every
start of the daemon.  Nothing here retries: botocore is told to make a single
attempt so that the agent's own backoff is the only retry loop, and every
failure becomes a :class:`~vaultd.seal.base.SealError` that says whether
retrying can help.

Settings are read the way Vault's awskms seal documents them, with the config
stanza taking precedence over the environment (the issue's rule: environment
variables fill in fields that are absent).  Vault itself lets
``VAULT_AWSKMS_SEAL_KEY_ID`` and ``AWS_KMS_ENDPOINT`` override the file; we do
not, so that what the file says is what runs.

boto3 is imported at the first call that needs it, not with this module.  It
costs about 0.4 s and 25 MiB per process; the daemon needs KMS only at init,
and importing it in the gunicorn master would put it in every worker's
resident memory and in every restart's path to unsealed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vaultd.seal.base import AutoSeal, SealError, StoredKey

if TYPE_CHECKING:
    import boto3

DEFAULT_REGION = "us-east-1"
"""Vault's fallback when neither the config, the environment nor an AWS
profile names a region."""

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0

OPTION_KEYS = frozenset(
    {"region", "access_key", "secret_key", "session_token", "kms_key_id", "endpoint"}
)

# Errors that no amount of waiting fixes: the key, the ciphertext or the
# credentials are wrong, and only an operator can change that.
PERMANENT_CODES = frozenset(
    {
        "AccessDeniedException",
        "IncorrectKeyException",
        "InvalidCiphertextException",
        "DisabledException",
        "NotFoundException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
        "InvalidGrantTokenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ValidationException",
        "NoCredentialsError",
        "PartialCredentialsError",
    }
)

# Faults of the service or its neighbourhood that heal by themselves.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "CloudHsmClusterNotActiveException",
        "CustomKeyStoreInvalidStateException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        # Clock skew: at boot the clock may be wrong until NTP has synced.
        "RequestExpired",
        "RequestTimeTooSkewed",
        "RequestInTheFuture",
        # Credentials fetched from a provider (instance role, container,
        # credential_process) failed to load; such providers are flaky at boot.
        "CredentialRetrievalError",
    }
)

# KMS reports clock skew as InvalidSignatureException, distinguishable only by
# its message; a bad secret key gives the same code with another message.
_CLOCK_SKEW_HINTS = ("signature expired", "signature not yet current")


CONTEXT_KEY = "vaultd:cluster_id"
"""The one key of the encryption context vaultd wraps the KEK under."""


_sdk_loaded = False


def sdk_loaded() -> bool:
    """Whether this process has imported boto3 for a seal.

    The daemon needs KMS only for one-off calls (``sys/init`` wraps the new
    key, a rekey or a seal migration wraps again); the agent does every
    unwrap.  The AWS SDK costs a process about 20 MiB that it keeps until it
    exits, so a gunicorn worker that loaded it for such a call is replaced
    once its request is answered (:mod:`vaultd.httprequest`): the new worker
    is forked from the master, which never loads it."""
    return _sdk_loaded


def check_context(context: Mapping[str, str]) -> None:
    """Refuse any encryption context but ``{"vaultd:cluster_id": <id>}``
    (no KMS call is made for it).  The values are not quoted: they come from
    whoever answered as the daemon."""
    if set(context) != {CONTEXT_KEY} or not isinstance(context[CONTEXT_KEY], str) or not context[CONTEXT_KEY]:
        raise SealError(
            f"the stored key's encryption context is not {{{CONTEXT_KEY!r}: <cluster id>}} "
            f"(keys: {sorted(str(k)[:64] for k in context)[:4]}); refusing to decrypt it",
            code="UnexpectedEncryptionContext",
            permanent=True,
        )


class AwsKmsConfigError(ValueError):
    """The seal stanza (or the environment filling it) cannot work as given."""


def _first(*values: object) -> str:
    for value in values:
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    return ""


class AwsKmsSeal(AutoSeal):
    """Wraps and unwraps the KEK with one KMS key.

    The boto3 client is made once and kept, so that credentials from a
    refreshing provider (instance role, container role) are refreshed by
    botocore between attempts rather than fetched anew each time.
    """

    type = "awskms"

    def __init__(
        self,
        options: Mapping[str, object] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        """Build from a ``seal "awskms"`` stanza's options, filling absent
        fields from the environment as Vault's documentation lists them.
        Credentials the stanza does not give are left to boto3's default chain
        (environment, shared files, container and instance roles).  No KMS
        call is made here: the daemon must start even when KMS is down."""
        options = options or {}
        env = os.environ if environ is None else environ
        kms_key_id = _first(
            options.get("kms_key_id"),
            env.get("VAULT_AWSKMS_SEAL_KEY_ID"),
            env.get("AWSKMS_WRAPPER_KEY_ID"),
        )
        region = _first(
            options.get("region"), env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION")
        )
        access_key = _first(options.get("access_key"))
        secret_key = _first(options.get("secret_key"))
        session_token = _first(options.get("session_token"))
        endpoint = _first(options.get("endpoint"), env.get("AWS_KMS_ENDPOINT"))
        if not kms_key_id:
            raise AwsKmsConfigError(
                "awskms seal: kms_key_id is not set (config or VAULT_AWSKMS_SEAL_KEY_ID)"
            )
        if bool(access_key) != bool(secret_key):
            raise AwsKmsConfigError(
                "awskms seal: access_key and secret_key must be given together"
            )
        parts = urlsplit(endpoint)
        if endpoint and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise AwsKmsConfigError(
                f"awskms seal: endpoint {endpoint!r} is not an https:// (or http://) URL"
            )
        self.kms_key_id = kms_key_id
        self.endpoint = endpoint
        self._region_option = region
        self._credentials = (access_key, secret_key, session_token)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._boto_session: boto3.session.Session | None = None
        self._kms: Any = None

    def prepare(self) -> None:
        """Import boto3 and read the AWS profile now rather than at the first
        KMS call.  The agent's KMS helper process calls this as it starts, so
        that a profile that does not exist is a config error at the agent's
        start, and the import is paid while the daemon it waits for comes up.
        Credentials are still not resolved."""
        self._session()

    def warm(self) -> None:
        """Make the KMS client now (the agent's KMS helper process does this
        while the daemon starts).  A failure here, such as no credentials
        yet, is left for the call itself to report and classify."""
        try:
            _ = self._client
        except Exception:  # reported by the next call, which classifies it
            self._forget_client()

    def _session(self) -> boto3.session.Session:
        global _sdk_loaded
        with self._lock:
            if self._boto_session is None:
                import boto3
                import botocore.exceptions

                _sdk_loaded = True

                access_key, secret_key, session_token = self._credentials
                try:
                    self._boto_session = boto3.session.Session(
                        aws_access_key_id=access_key or None,
                        aws_secret_access_key=secret_key or None,
                        aws_session_token=(session_token or None) if access_key else None,
                    )
                except botocore.exceptions.BotoCoreError as exc:  # e.g. AWS_PROFILE names no profile
                    raise AwsKmsConfigError(f"awskms seal: {exc}") from None
            return self._boto_session

    @property
    def region(self) -> str:
        """The stanza's or environment's region, else the AWS profile's, else
        Vault's fallback.  Only the middle one needs boto3."""
        return self._region_option or self._session().region_name or DEFAULT_REGION

    @property
    def _client(self) -> Any:
        """The KMS client, made at the first call rather than here: making it
        resolves credentials, which may mean asking the instance metadata
        service, and neither the daemon's start nor the agent's should wait
        on (or fail for) that before KMS is actually needed."""
        session = self._session()
        region = self.region
        with self._lock:
            if self._kms is None:
                from botocore.config import Config

                config = Config(
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                    # One attempt per call: the agent's backoff is the only
                    # retry loop, so delays stay what the operator configured.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                )
                self._kms = session.client(
                    "kms", region_name=region, endpoint_url=self.endpoint or None, config=config
                )
            return self._kms

    def _forget_client(self) -> None:
        """Drop a client that found no credentials, so the next call looks
        for them again (an instance role may have become reachable)."""
        with self._lock:
            self._kms = None

    def __repr__(self) -> str:
        return (
            # The region as configured: repr must not import boto3 or fail.
            f"AwsKmsSeal(kms_key_id={self.kms_key_id!r}, region={self._region_option or None!r}, "
            f"endpoint={self.endpoint!r})"
        )

    @property
    def endpoint_url(self) -> str:
        """Where requests go: the configured endpoint or AWS's regional one."""
        return str(self._client.meta.endpoint_url)

    @property
    def credentials_refresh(self) -> bool:
        """Whether botocore can get new credentials by itself (role-based)."""
        import botocore.credentials

        creds = self._session().get_credentials()
        return isinstance(creds, botocore.credentials.RefreshableCredentials)

    def describe_key(self) -> str:
        """The key's ARN, after checking that it can wrap a KEK at all.

        The daemon calls this at init so that a typo in ``kms_key_id`` or an
        asymmetric or disabled key is reported before any KEK is made."""
        meta = self._call("DescribeKey", KeyId=self.kms_key_id)["KeyMetadata"]
        arn = str(meta.get("Arn", ""))
        state = str(meta.get("KeyState", "Enabled"))
        if state == "Disabled":
            raise SealError(f"KMS key {arn} is disabled", code="DisabledException", permanent=True)
        if state != "Enabled":
            raise SealError(
                f"KMS key {arn} is in state {state}", code="KMSInvalidStateException", permanent=True
            )
        usage = str(meta.get("KeyUsage", "ENCRYPT_DECRYPT"))
        spec = str(meta.get("KeySpec", meta.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT")))
        if usage != "ENCRYPT_DECRYPT" or spec != "SYMMETRIC_DEFAULT":
            raise SealError(
                f"KMS key {arn} is {spec}/{usage}; a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key is needed",
                code="InvalidKeyUsageException",
                permanent=True,
            )
        return arn

    def wrap(self, kek: bytes, context: dict[str, str]) -> StoredKey:
        if not isinstance(kek, (bytes, bytearray)) or not 1 <= len(kek) <= 4096:
            # Checked here so botocore's parameter validation, whose message
            # quotes the value, never sees a bad one.
            raise SealError("KEK must be 1 to 4096 bytes", code="InvalidKek", permanent=True)
        params: dict[str, object] = {"KeyId": self.kms_key_id, "Plaintext": bytes(kek)}
        if context:
            params["EncryptionContext"] = dict(context)
        response = self._call("Encrypt", **params)
        return StoredKey(
            seal_type=self.type,
            ciphertext=response["CiphertextBlob"],
            key_id=str(response["KeyId"]),
            encryption_context=dict(context),
        )

    def unwrap(self, stored: StoredKey) -> bytes:
        """Decrypt the stored key with *this* seal's key and the one context
        shape vaultd ever wraps with.

        The stored key comes from the daemon over the agent channel, so it is
        input, not authority: the key is always the configured
        ``kms_key_id`` (never the ``key_id`` the stored key names), which
        makes KMS refuse a ciphertext of any other key with
        IncorrectKeyException; and the encryption context must be exactly
        ``{"vaultd:cluster_id": <non-empty string>}``.  Otherwise whoever
        answers in the daemon's place could have the agent decrypt any
        ciphertext its IAM principal can reach and send it the plaintext."""
        if stored.seal_type != self.type:
            raise SealError(
                f"stored key was made by the {stored.seal_type!r} seal, not awskms",
                code="UnsupportedSealType",
                permanent=True,
            )
        if not stored.ciphertext:
            raise SealError("stored key has no ciphertext", code="InvalidCiphertextException", permanent=True)
        check_context(stored.encryption_context)
        params: dict[str, object] = {
            "CiphertextBlob": stored.ciphertext,
            "KeyId": self.kms_key_id,
            "EncryptionContext": dict(stored.encryption_context),
        }
        return self._call("Decrypt", **params)["Plaintext"]

    def _call(self, operation: str, **params: object) -> dict[str, Any]:
        import botocore
        import botocore.exceptions

        try:
            client = self._client
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            raise SealError(
                f"cannot make the KMS client: {exc}", code="InvalidConfiguration", permanent=True
            ) from None
        method = getattr(client, botocore.xform_name(operation))
        try:
            return method(**params)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if isinstance(exc, botocore.exceptions.NoCredentialsError):
                self._forget_client()
            # "from None": botocore exceptions can quote request parameters.
            raise self.classify(operation, exc) from None

    def classify(self, operation: str, exc: Exception) -> SealError:
        """Turn a botocore failure into a SealError with the KMS error code."""
        import botocore.exceptions

        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(error.get("Code") or status or "UnknownError")
            message = str(error.get("Message") or "")
            permanent = self._client_error_is_permanent(code, message, status)
            detail = f"{code}: {message}" if message else code
            return SealError(f"KMS {operation} failed: {detail}", code=code, permanent=permanent)
        code = type(exc).__name__
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return SealError(
                f"KMS {operation} failed: invalid request parameters", code=code, permanent=True
            )
        if isinstance(exc, (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError)):
            return SealError(f"KMS {operation} failed: {exc}", code=code, permanent=False)
        return SealError(
            f"KMS {operation} failed: {exc}", code=code, permanent=code not in RETRYABLE_CODES
        )

    def _client_error_is_permanent(self, code: str, message: str, status: int) -> bool:
        if code == "ExpiredTokenException" or code == "ExpiredToken":
            # Role credentials are refreshed by botocore before the next
            # attempt; a static session token from the config never will be.
            return not self.credentials_refresh
        if code == "InvalidSignatureException" and any(
            hint in message.lower() for hint in _CLOCK_SKEW_HINTS
        ):
            return False
        if code in PERMANENT_CODES:
            return True
        return not (code in RETRYABLE_CODES or status == 429 or status >= 500)
