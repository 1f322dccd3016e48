"""The agent's exit codes, in one place: the README documents them and the
systemd unit lists the permanent ones in ``RestartPreventExitStatus=``.

A permanent error (the key, the ciphertext or the credentials are wrong)
cannot heal by restarting the agent, so systemd must not restart it in a loop;
each kind gets its own code so that an operator reading ``systemctl status``
knows where to look before reading the journal.

| code | name              | meaning                                                        |
|------|-------------------|----------------------------------------------------------------|
| 0    | OK                | stopped by SIGTERM/SIGINT                                      |
| 1    | UNEXPECTED        | a bug or an unforeseen error (systemd may restart)             |
| 2    | CONFIG            | bad command line or config file, no awskms seal, plain HTTP to |
|      |                   | a remote host, the daemon uses another seal or refuses us      |
| 3    | KMS_AUTH          | KMS denied access, or credentials are missing, invalid or     |
|      |                   | expired (AccessDeniedException, UnrecognizedClientException,   |
|      |                   | InvalidSignatureException, ExpiredTokenException,              |
|      |                   | NoCredentialsError)                                            |
| 4    | WRONG_KEY         | the stored key does not decrypt with this KMS key or context   |
|      |                   | (IncorrectKeyException, InvalidCiphertextException), or the    |
|      |                   | daemon rejected the key KMS returned                           |
| 5    | KEY_UNUSABLE      | the KMS key is disabled, missing, pending deletion or not an   |
|      |                   | encryption key (DisabledException, NotFoundException,          |
|      |                   | KMSInvalidStateException, InvalidKeyUsageException)            |
| 6    | SEAL_OTHER        | any other permanent KMS error (ValidationException, a stored   |
|      |                   | key the agent cannot read or whose encryption context is not   |
|      |                   | exactly {"vaultd:cluster_id": ...})                            |
| 7    | UNTRUSTED_DAEMON  | the agent socket, its directory or the process behind it       |
|      |                   | belongs to a uid the agent does not trust, or the directory is |
|      |                   | writable by others: no key was sent                            |
"""

from __future__ import annotations

from vaultd.seal.base import SealError

OK = 0
UNEXPECTED = 1
CONFIG = 2
KMS_AUTH = 3
WRONG_KEY = 4
KEY_UNUSABLE = 5
SEAL_OTHER = 6
UNTRUSTED_DAEMON = 7

PERMANENT = (CONFIG, KMS_AUTH, WRONG_KEY, KEY_UNUSABLE, SEAL_OTHER, UNTRUSTED_DAEMON)
"""What ``RestartPreventExitStatus=`` lists."""

NAMES = {
    OK: "OK",
    UNEXPECTED: "UNEXPECTED",
    CONFIG: "CONFIG",
    KMS_AUTH: "KMS_AUTH",
    WRONG_KEY: "WRONG_KEY",
    KEY_UNUSABLE: "KEY_UNUSABLE",
    SEAL_OTHER: "SEAL_OTHER",
    UNTRUSTED_DAEMON: "UNTRUSTED_DAEMON",
}

_AUTH_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredTokenException",
        "ExpiredToken",
        "NoCredentialsError",
        "PartialCredentialsError",
    }
)
_WRONG_KEY_CODES = frozenset({"IncorrectKeyException", "InvalidCiphertextException"})
WRONG_KEY_CODES = _WRONG_KEY_CODES
"""KMS codes for "this key did not wrap that ciphertext" (the agent then tries
the other seal stanza of a migration, if there is one)."""
_KEY_UNUSABLE_CODES = frozenset(
    {"DisabledException", "NotFoundException", "KMSInvalidStateException", "InvalidKeyUsageException"}
)


def for_seal_error(error: SealError) -> int:
    """The exit code for a permanent seal error (by its KMS error code)."""
    if error.code in _AUTH_CODES:
        return KMS_AUTH
    if error.code in _WRONG_KEY_CODES:
        return WRONG_KEY
    if error.code in _KEY_UNUSABLE_CODES:
        return KEY_UNUSABLE
    return SEAL_OTHER
