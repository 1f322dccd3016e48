import os
import resource

from vaultd.hardening import disable_core_dumps


def test_core_dumps_are_off_in_the_process_and_its_children() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child, so the test runner keeps its limits
        disable_core_dumps()
        child = os.fork()
        if child == 0:
            os._exit(0 if resource.getrlimit(resource.RLIMIT_CORE) == (0, 0) else 1)
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
