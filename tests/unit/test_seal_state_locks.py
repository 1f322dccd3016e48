"""The shared seal state's two record locks across workers with threads.

Linux refuses a blocking record-lock request with EDEADLK when processes
wait on each other in a cycle, counting processes rather than threads.  The
test builds exactly the cycle a bench prefill once hit: in one process a
thread holds the seal lock while another waits for the slot lock; in a
second process a thread holds the slot lock while another asks for the seal
lock.  Nothing is really deadlocked (the holders wait for nothing), so every
thread must end up with its lock.
"""

from __future__ import annotations

import os
import threading
import time

from vaultd.core.seal_state import SharedSealState

HOLD = 0.5
"""Seconds each holder keeps its lock, long enough for the waiters to queue."""


def _hold(lock: object, taken: threading.Event) -> None:
    with lock:  # type: ignore[attr-defined]
        taken.set()
        time.sleep(HOLD)


def _wait_for(lock: object, errors: list[BaseException]) -> None:
    try:
        with lock:  # type: ignore[attr-defined]
            pass
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_threads_of_two_workers_that_look_deadlocked_to_the_kernel_all_get_their_lock() -> None:
    state = SharedSealState.create(lock_memory=False)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the second worker
        code = 1
        try:
            slot_taken = threading.Event()
            holder = threading.Thread(target=_hold, args=(state._slot_locked(), slot_taken))
            holder.start()
            slot_taken.wait(5)
            os.write(to_parent_w, b"s")  # holding the slot lock
            os.read(to_child_r, 1)  # the parent holds the seal lock and waits for ours
            time.sleep(0.1)
            errors: list[BaseException] = []
            _wait_for(state.locked(), errors)  # closes the cycle
            holder.join()
            code = 0 if not errors else 3
        finally:
            os._exit(code)
    os.read(to_parent_r, 1)
    seal_taken = threading.Event()
    holder = threading.Thread(target=_hold, args=(state.locked(), seal_taken))
    holder.start()
    seal_taken.wait(5)
    errors: list[BaseException] = []
    waiter = threading.Thread(target=_wait_for, args=(state._slot_locked(), errors))
    waiter.start()
    time.sleep(0.1)  # queued on the slot lock the child holds
    os.write(to_child_w, b"g")
    holder.join()
    waiter.join(10)
    _, status = os.waitpid(pid, 0)
    assert not waiter.is_alive()
    assert errors == []
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the second worker's request failed (EDEADLK)"
