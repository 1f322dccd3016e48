"""The agent's KMS helper process (unsealer/kms_process.py) against moto's KMS
server: the key comes back whole, KMS's answers keep their meaning across the
pipe, and a child that dies or is ended costs one retry, never the agent."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.faultproxy import FaultProxy
from tests.kms_fixtures import KmsKey
from unsealer.kms_process import KmsProcess
from vaultd.seal.awskms import AwsKmsConfigError, AwsKmsSeal
from vaultd.seal.base import SealError, StoredKey

CONTEXT = {"vaultd:cluster_id": "c-test"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wrapped(options: dict[str, str]) -> tuple[bytes, StoredKey]:
    kek = os.urandom(32)
    return kek, AwsKmsSeal(options).wrap(kek, CONTEXT)


def test_the_child_unwraps_the_key_and_rest_ends_it(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    kek, stored = _wrapped(kms_key.seal_options())
    seal = KmsProcess(kms_key.seal_options())
    assert seal.pid is None, "a child before anything asked for one"
    try:
        plaintext = seal.unwrap(stored)
        assert isinstance(plaintext, bytearray)
        assert plaintext == kek
        pid = seal.pid
        assert pid is not None and _alive(pid)
        assert seal.unwrap(stored) == kek
        assert seal.pid == pid, "the child is kept between the unwraps of one episode"
    finally:
        seal.rest()
    assert seal.pid is None
    assert not _alive(pid)


def test_warm_starts_the_child_without_waiting_and_unwrap_uses_it(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    kek, stored = _wrapped(kms_key.seal_options())
    seal = KmsProcess(kms_key.seal_options())
    try:
        seal.warm()
        pid = seal.pid
        assert pid is not None
        seal.warm()
        assert seal.pid == pid
        assert seal.unwrap(stored) == kek
        assert seal.pid == pid
    finally:
        seal.rest()


@pytest.mark.parametrize(
    ("code", "permanent"),
    [("ThrottlingException", False), ("AccessDeniedException", True), ("DisabledException", True)],
)
def test_kms_errors_cross_the_pipe_with_their_code_and_permanence(
    aws_env: dict[str, str], kms_key: KmsKey, kms_proxy: FaultProxy, code: str, permanent: bool
) -> None:
    kek, stored = _wrapped(kms_key.seal_options())
    seal = KmsProcess(kms_key.seal_options(kms_proxy.url))
    try:
        seal.check()
        pid = seal.pid
        kms_proxy.fail(code, times=1)
        with pytest.raises(SealError) as caught:
            seal.unwrap(stored)
        assert (caught.value.code, caught.value.permanent) == (code, permanent)
        assert seal.pid == pid, "a KMS refusal is an answer: the child stays"
        assert seal.unwrap(stored) == kek
    finally:
        seal.rest()


def test_a_child_that_dies_is_a_retryable_error_and_the_next_unwrap_starts_another(
    aws_env: dict[str, str], kms_key: KmsKey
) -> None:
    kek, stored = _wrapped(kms_key.seal_options())
    seal = KmsProcess(kms_key.seal_options())
    try:
        seal.check()
        pid = seal.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        seal.warm()
        assert seal.pid == pid, "warm() restarted a dead child: it would at every look at a down daemon"
        with pytest.raises(SealError) as caught:
            seal.unwrap(stored)
        assert caught.value.code == "KmsHelperExited"
        assert not caught.value.permanent
        assert seal.pid is None
        assert seal.unwrap(stored) == kek
        assert seal.pid not in (None, pid)
    finally:
        seal.rest()


def test_a_profile_that_does_not_exist_is_a_config_error_at_check(
    aws_env: dict[str, str], kms_key: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    seal = KmsProcess(kms_key.seal_options())
    with pytest.raises(AwsKmsConfigError, match="no-such-profile"):
        seal.check()
    assert seal.pid is None, "the failed child was not reaped"


def test_a_stanza_without_a_key_id_fails_before_any_child_starts() -> None:
    with pytest.raises(AwsKmsConfigError, match="kms_key_id"):
        KmsProcess({"region": "us-east-1"})


def test_what_the_child_is_given_stays_off_its_command_line(aws_env: dict[str, str], kms_key: KmsKey) -> None:
    """The stanza may hold a secret key: it goes down the pipe."""
    options = kms_key.seal_options()
    seal = KmsProcess(options)
    try:
        seal.check()
        with open(f"/proc/{seal.pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read()
        assert b"unsealer.kms_process" in argv
        assert options["secret_key"].encode() not in argv
        with open(f"/proc/{seal.pid}/environ", "rb") as environ:
            assert options["secret_key"].encode() not in environ.read()
    finally:
        seal.rest()


def test_a_child_that_cannot_start_is_retryable_never_a_config_error(
    aws_env: dict[str, str], kms_key: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fork or exec is not the operator's config: the agent must
    not exit for good (code 2) over it, and the next unwrap tries again."""
    kek, stored = _wrapped(kms_key.seal_options())
    seal = KmsProcess(kms_key.seal_options())
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    try:
        seal.check()
        seal.warm()
        with pytest.raises(SealError) as caught:
            seal.unwrap(stored)
        assert caught.value.code == "KmsHelperStart"
        assert not caught.value.permanent
        monkeypatch.undo()
        assert seal.unwrap(stored) == kek
    finally:
        seal.rest()
