"""vaultd.fastuuid: the ids answers carry as ``request_id`` are random
version-4 UUIDs in uuid's text form, each handed out once, across threads
and across a fork."""

from __future__ import annotations

import os
import re
import threading
import uuid

from vaultd import fastuuid
from vaultd.api.http import envelope_body

_FORMAT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_ids_are_random_version_4_uuids_in_text_form() -> None:
    ids = [fastuuid.uuid4_str() for _ in range(3 * fastuuid.BATCH + 7)]  # several refills
    assert len(set(ids)) == len(ids)
    for text in ids:
        assert _FORMAT.fullmatch(text), text
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    # Every random position takes every value it may take: no digit copied
    # from a fixed place, none left at the template's zero.
    for position in range(36):
        seen = {text[position] for text in ids}
        if position in (8, 13, 18, 23):
            assert seen == {"-"}
        elif position == 14:
            assert seen == {"4"}
        elif position == 19:
            assert seen == set("89ab")
        else:
            assert seen == set("0123456789abcdef"), position


def test_answers_carry_one() -> None:
    first, second = envelope_body({"a": 1})["request_id"], envelope_body(None)["request_id"]
    assert _FORMAT.fullmatch(first) and _FORMAT.fullmatch(second) and first != second


def test_threads_never_share_an_id() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(drawn))

    def draw(into: list[str]) -> None:
        start.wait()
        for _ in range(2 * fastuuid.BATCH):
            into.append(fastuuid.uuid4_str())

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in drawn for text in into]
    assert len(every) == len(set(every)) == 8 * fastuuid.BATCH


def _ids_of_a_child(count: int) -> set[str]:
    """``count`` ids drawn by a forked child, read back through a pipe."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write and leave without running pytest's exit
        try:
            os.close(reader)
            payload = "\n".join(fastuuid.uuid4_str() for _ in range(count)).encode()
            with os.fdopen(writer, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as source:
        text = source.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return set(text.split())


def test_forked_children_draw_ids_of_their_own() -> None:
    fastuuid.uuid4_str()  # the parent's pool is full when it forks
    count = fastuuid.BATCH // 2  # fewer than the pool holds: copies would show
    first, second = _ids_of_a_child(count), _ids_of_a_child(count)
    mine = {fastuuid.uuid4_str() for _ in range(count)}
    assert len(first) == len(second) == len(mine) == count
    assert not first & second and not first & mine and not second & mine
    assert all(_FORMAT.fullmatch(text) for text in first | second)
