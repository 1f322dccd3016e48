"""The awskms seal against a real KMS emulator (moto server) over HTTP, with
the fault proxy supplying the errors moto cannot produce."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from tests.faultproxy import FaultProxy
from tests.kms_fixtures import ACCESS_KEY, KmsKey, kms_client
from vaultd.seal.awskms import AwsKmsConfigError, AwsKmsSeal
from vaultd.seal.base import SealError, StoredKey

KEK = bytes(range(100, 132))
CONTEXT = {"vaultd:cluster_id": "3f1c1c8e-0000-4000-8000-000000000001"}


def _secret_forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        base64.b64encode(secret).decode(),
        repr(secret)[2:-1],
        secret.decode("latin-1"),
    ]


def _assert_no_secret(err: BaseException, secret: bytes = KEK) -> None:
    texts = [str(err), repr(err), *(str(a) for a in err.args)]
    for text in texts:
        for form in _secret_forms(secret):
            assert form not in text
    assert err.__cause__ is None


@pytest.fixture
def seal(aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy) -> AwsKmsSeal:
    return AwsKmsSeal(kms_key.seal_options(kms_proxy.url), read_timeout=2)


@pytest.fixture
def stored(seal: AwsKmsSeal) -> StoredKey:
    return seal.wrap(KEK, CONTEXT)


# --- the happy path ------------------------------------------------------------


@pytest.mark.parametrize("which", ["key_id", "arn", "alias"])
def test_wrap_unwrap_roundtrip_with_each_form_of_key_id(
    aws_env: dict[str, str], kms_key: KmsKey, which: str
) -> None:
    seal = AwsKmsSeal(kms_key.seal_options(kms_key_id=getattr(kms_key, which)))
    stored = seal.wrap(KEK, CONTEXT)
    assert stored.seal_type == "awskms"
    assert stored.key_id == kms_key.arn
    assert stored.encryption_context == CONTEXT
    assert KEK not in stored.ciphertext
    assert seal.unwrap(StoredKey.from_json(stored.to_json())) == KEK


def test_describe_key_returns_the_arn_for_an_alias(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    seal = AwsKmsSeal(kms_key.seal_options(kms_key_id=kms_key.alias))
    assert seal.describe_key() == kms_key.arn


def test_describe_key_rejects_a_disabled_key(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    kms_client(kms_key.endpoint).disable_key(KeyId=kms_key.key_id)
    seal = AwsKmsSeal(kms_key.seal_options())
    with pytest.raises(SealError) as caught:
        seal.describe_key()
    assert (caught.value.code, caught.value.permanent) == ("DisabledException", True)


def test_describe_key_rejects_an_asymmetric_key(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    meta = kms_client(kms_key.endpoint).create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    seal = AwsKmsSeal(kms_key.seal_options(kms_key_id=meta["KeyMetadata"]["KeyId"]))
    with pytest.raises(SealError) as caught:
        seal.describe_key()
    assert (caught.value.code, caught.value.permanent) == ("InvalidKeyUsageException", True)


def test_describe_key_of_a_missing_alias_is_not_found(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    seal = AwsKmsSeal(kms_key.seal_options(kms_key_id="alias/no-such-key"))
    with pytest.raises(SealError) as caught:
        seal.describe_key()
    assert (caught.value.code, caught.value.permanent) == ("NotFoundException", True)


# --- refusals from the real emulator --------------------------------------------


def test_unwrap_with_another_encryption_context_fails(seal: AwsKmsSeal, stored: StoredKey) -> None:
    forged = StoredKey(
        seal_type=stored.seal_type,
        ciphertext=stored.ciphertext,
        key_id=stored.key_id,
        encryption_context={"vaultd:cluster_id": "another-cluster"},
    )
    with pytest.raises(SealError) as caught:
        seal.unwrap(forged)
    assert (caught.value.code, caught.value.permanent) == ("InvalidCiphertextException", True)
    _assert_no_secret(caught.value)


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"vaultd:cluster_id": ""},
        {"cluster_id": "3f1c1c8e"},
        {"vaultd:cluster_id": "3f1c1c8e", "purpose": "other"},
        {"aws:pi": "x"},
    ],
    ids=["empty", "empty-id", "other-key", "extra-key", "foreign"],
)
def test_unwrap_refuses_any_other_context_shape_without_asking_kms(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy, context: dict[str, str]
) -> None:
    """An impostor answering as the daemon must not get the agent to decrypt
    a ciphertext made for some other purpose under the same key."""
    shaped = StoredKey(stored.seal_type, stored.ciphertext, stored.key_id, context)
    before = kms_proxy.count("Decrypt")
    with pytest.raises(SealError) as caught:
        seal.unwrap(shaped)
    assert (caught.value.code, caught.value.permanent) == ("UnexpectedEncryptionContext", True)
    assert kms_proxy.count("Decrypt") == before
    _assert_no_secret(caught.value)


def test_stored_key_context_values_must_be_strings(stored: StoredKey) -> None:
    raw = stored.to_dict()
    raw["encryption_context"] = {"vaultd:cluster_id": 5}
    with pytest.raises(ValueError):
        StoredKey.from_dict(raw)


def test_unwrap_decrypts_with_the_configured_key_whatever_key_the_stored_key_names(
    seal: AwsKmsSeal, stored: StoredKey, kms_key: KmsKey
) -> None:
    other = kms_client(kms_key.endpoint).create_key()["KeyMetadata"]["Arn"]
    renamed = StoredKey(stored.seal_type, stored.ciphertext, other, stored.encryption_context)
    assert seal.unwrap(renamed) == KEK


def test_a_ciphertext_of_another_key_is_not_decrypted(
    seal: AwsKmsSeal, kms_key: KmsKey, kms_proxy: FaultProxy
) -> None:
    """The stored key names the key that made it, and the agent's principal
    could use that key too: the agent still asks for its own key only, so
    KMS refuses."""
    other = kms_client(kms_key.endpoint).create_key()["KeyMetadata"]["Arn"]
    other_seal = AwsKmsSeal(kms_key.seal_options(kms_proxy.url, kms_key_id=other))
    foreign = other_seal.wrap(b"k" * 32, {"vaultd:cluster_id": "another-cluster"})
    assert foreign.key_id == other
    with pytest.raises(SealError) as caught:
        seal.unwrap(foreign)
    # moto says AccessDeniedException where AWS says IncorrectKeyException;
    # both are permanent, which is what matters here.
    assert caught.value.code in {"AccessDeniedException", "IncorrectKeyException"}
    assert caught.value.permanent


def test_unwrap_refuses_a_stored_key_of_another_seal(seal: AwsKmsSeal, stored: StoredKey) -> None:
    other = StoredKey("transit", stored.ciphertext, stored.key_id, stored.encryption_context)
    with pytest.raises(SealError) as caught:
        seal.unwrap(other)
    assert (caught.value.code, caught.value.permanent) == ("UnsupportedSealType", True)


# --- the error matrix, through the fault proxy -----------------------------------

PERMANENT = [
    "AccessDeniedException",
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "DisabledException",
    "NotFoundException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ValidationException",
    "ExpiredTokenException",  # static credentials: they will not get better
]
RETRYABLE = [
    "ThrottlingException",
    "KMSInternalException",
    "KeyUnavailableException",
    "DependencyTimeoutException",
]


@pytest.mark.parametrize(
    ("code", "permanent"), [(c, True) for c in PERMANENT] + [(c, False) for c in RETRYABLE]
)
def test_kms_error_codes_map_to_seal_errors(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy, code: str, permanent: bool
) -> None:
    kms_proxy.fail(code, times=1, operations={"Decrypt"})
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert (caught.value.code, caught.value.permanent) == (code, permanent)
    assert code in str(caught.value)
    _assert_no_secret(caught.value)
    # botocore made one attempt: the agent's backoff is the only retry loop.
    assert kms_proxy.count("Decrypt") == 1
    assert seal.unwrap(stored) == KEK


@pytest.mark.parametrize("code", ["AccessDeniedException", "ThrottlingException", "DisabledException"])
def test_encrypt_errors_are_classified_too(
    seal: AwsKmsSeal, kms_proxy: FaultProxy, code: str
) -> None:
    kms_proxy.fail(code, times=1, operations={"Encrypt"})
    with pytest.raises(SealError) as caught:
        seal.wrap(KEK, CONTEXT)
    assert caught.value.code == code
    assert caught.value.permanent == (code != "ThrottlingException")
    _assert_no_secret(caught.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_bare_http_faults_are_retryable(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy, status: int
) -> None:
    kms_proxy.fail_http(status, body=b"<html>busy</html>", content_type="text/html", times=1)
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert caught.value.permanent is False
    assert kms_proxy.count("Decrypt") == 1


def test_throttling_sent_as_http_429_is_retryable(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy
) -> None:
    kms_proxy.fail("ThrottlingException", status=429, times=1)
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert (caught.value.code, caught.value.permanent) == ("ThrottlingException", False)


def test_connection_reset_is_retryable(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy
) -> None:
    kms_proxy.reset_connections(times=1)
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert caught.value.permanent is False
    assert kms_proxy.count("Decrypt", outcome="reset") == 1
    assert seal.unwrap(stored) == KEK


def test_unreachable_kms_is_retryable(seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy) -> None:
    kms_proxy.go_down()
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    # A pooled connection is reset, a new one refused: both mean unreachable.
    assert caught.value.code in {"ConnectionClosedError", "EndpointConnectionError"}
    assert caught.value.permanent is False
    with pytest.raises(SealError) as again:
        seal.unwrap(stored)
    assert (again.value.code, again.value.permanent) == ("EndpointConnectionError", False)
    kms_proxy.come_up()
    assert seal.unwrap(stored) == KEK


def test_read_timeout_is_retryable(
    aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy
) -> None:
    seal = AwsKmsSeal(kms_key.seal_options(kms_proxy.url), read_timeout=0.5)
    stored = seal.wrap(KEK, CONTEXT)
    kms_proxy.hang(times=1, operations={"Decrypt"})
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    assert (caught.value.code, caught.value.permanent) == ("ReadTimeoutError", False)
    kms_proxy.clear()


def test_clock_skew_is_retryable_but_a_bad_signature_is_not(
    seal: AwsKmsSeal, stored: StoredKey, kms_proxy: FaultProxy
) -> None:
    kms_proxy.fail(
        "InvalidSignatureException",
        times=1,
        message="Signature expired: 20240101T000000Z is now earlier than 20240101T000500Z",
    )
    with pytest.raises(SealError) as skew:
        seal.unwrap(stored)
    assert skew.value.permanent is False
    kms_proxy.fail(
        "InvalidSignatureException",
        times=1,
        message="The request signature we calculated does not match the signature you provided.",
    )
    with pytest.raises(SealError) as bad:
        seal.unwrap(stored)
    assert bad.value.permanent is True


# --- credentials -------------------------------------------------------------------


def test_missing_credentials_are_permanent(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    options = kms_key.seal_options()
    del options["access_key"], options["secret_key"]
    seal = AwsKmsSeal(options)
    with pytest.raises(SealError) as caught:
        seal.wrap(KEK, CONTEXT)
    assert (caught.value.code, caught.value.permanent) == ("NoCredentialsError", True)


def test_credentials_that_appear_later_are_found_on_the_next_call(
    aws_env: dict[str, str], kms_key: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = kms_key.seal_options()
    del options["access_key"], options["secret_key"]
    seal = AwsKmsSeal(options)
    with pytest.raises(SealError):
        seal.wrap(KEK, CONTEXT)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    assert seal.unwrap(seal.wrap(KEK, CONTEXT)) == KEK


def test_credentials_come_from_the_environment_when_the_stanza_has_none(
    aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    options = kms_key.seal_options(kms_proxy.url)
    del options["access_key"], options["secret_key"]
    AwsKmsSeal(options).wrap(KEK, CONTEXT)
    assert [r.access_key for r in kms_proxy.records] == ["AKIAFROMENVIRONMENT0"]


def test_stanza_credentials_win_over_the_environment(
    aws_env: dict[str, str], seal: AwsKmsSeal, kms_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    seal.wrap(KEK, CONTEXT)
    assert [r.access_key for r in kms_proxy.records] == [ACCESS_KEY]


class _ContainerCredentials(http.server.BaseHTTPRequestHandler):
    """The ECS/container credential endpoint: role credentials that expire."""

    served: list[str] = []

    def do_GET(self) -> None:
        self.served.append(self.path)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        body = json.dumps(
            {
                "AccessKeyId": "ASIAROLECREDENTIALS0",
                "SecretAccessKey": "role-secret",
                "Token": "role-session-token",
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def container_role(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Role credentials from a loopback container endpoint; yields the list
    of requests it served."""
    handler = type("Handler", (_ContainerCredentials,), {"served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/creds")
    try:
        yield handler.served
    finally:
        server.shutdown()
        server.server_close()


def test_role_credentials_from_the_default_chain_and_expiry_is_retryable(
    container_role: list[str], kms_key: KmsKey, kms_proxy: FaultProxy
) -> None:
    options = kms_key.seal_options(kms_proxy.url)
    del options["access_key"], options["secret_key"]
    seal = AwsKmsSeal(options)
    # Making the seal asks no one: the daemon starts even with no network.
    assert container_role == []
    stored = seal.wrap(KEK, CONTEXT)
    assert container_role != []
    assert kms_proxy.records[-1].access_key == "ASIAROLECREDENTIALS0"
    assert seal.credentials_refresh
    kms_proxy.fail("ExpiredTokenException", times=1)
    with pytest.raises(SealError) as caught:
        seal.unwrap(stored)
    # botocore refreshes role credentials itself, so the next attempt can work.
    assert (caught.value.code, caught.value.permanent) == ("ExpiredTokenException", False)
    assert seal.unwrap(stored) == KEK


# --- configuration ----------------------------------------------------------------


def test_vault_walkthrough_stanza_works_as_written(aws_env: dict[str, str]) -> None:
    seal = AwsKmsSeal(
        {
            "region": "ap-northeast-1",
            "access_key": "AKIAIOSFODNN7EXAMPLE",
            "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "kms_key_id": "642b1b91-d1bc-45ca-a7cb-10da40b51b23",
            "endpoint": "",
        }
    )
    assert seal.region == "ap-northeast-1"
    assert seal.kms_key_id == "642b1b91-d1bc-45ca-a7cb-10da40b51b23"
    assert seal.endpoint == ""
    assert "kms.ap-northeast-1.amazonaws.com" in seal.endpoint_url
    assert "wJalrXUtnFEMI" not in repr(seal)


def test_environment_fills_absent_fields(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_AWSKMS_SEAL_KEY_ID", "alias/from-env")
    monkeypatch.setenv("AWS_KMS_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    seal = AwsKmsSeal({})
    assert (seal.kms_key_id, seal.endpoint, seal.region) == (
        "alias/from-env",
        "http://127.0.0.1:9/",
        "eu-west-3",
    )
    assert seal.endpoint_url.startswith("http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert AwsKmsSeal({}).region == "eu-central-1"


def test_stanza_wins_over_the_environment(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_AWSKMS_SEAL_KEY_ID", "alias/from-env")
    monkeypatch.setenv("AWS_KMS_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    seal = AwsKmsSeal(
        {"kms_key_id": "alias/from-file", "endpoint": "http://127.0.0.1:10/", "region": "sa-east-1"}
    )
    assert (seal.kms_key_id, seal.endpoint, seal.region) == (
        "alias/from-file",
        "http://127.0.0.1:10/",
        "sa-east-1",
    )


def test_region_defaults_to_us_east_1(aws_env: dict[str, str]) -> None:
    assert AwsKmsSeal({"kms_key_id": "k"}).region == "us-east-1"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kms_key_id": "k", "access_key": "AKIA0000000000000000"},
        {"kms_key_id": "k", "secret_key": "SuperSecretValue"},
        {"kms_key_id": "k", "endpoint": "kms.example.com"},
    ],
)
def test_unusable_stanzas_are_config_errors(aws_env: dict[str, str], options: dict[str, str]) -> None:
    with pytest.raises(AwsKmsConfigError) as caught:
        AwsKmsSeal(options)
    assert "SuperSecretValue" not in str(caught.value)


def test_a_kek_kms_cannot_take_is_refused_without_quoting_it(seal: AwsKmsSeal) -> None:
    big = KEK * 200
    with pytest.raises(SealError) as caught:
        seal.wrap(big, CONTEXT)
    assert caught.value.permanent
    _assert_no_secret(caught.value, KEK)


def test_retry_settings_from_the_environment_do_not_add_botocore_retries(
    aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    seal = AwsKmsSeal(kms_key.seal_options(kms_proxy.url))
    stored = seal.wrap(KEK, CONTEXT)
    kms_proxy.fail("ThrottlingException", times=3, operations={"Decrypt"})
    with pytest.raises(SealError):
        seal.unwrap(stored)
    assert kms_proxy.count("Decrypt") == 1
