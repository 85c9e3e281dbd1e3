"""When `device run` gives up restarting a process, and the one line it then says."""

from __future__ import annotations

import pytest

from fedadapt.clients import exits
from fedadapt.clients.exits import Exits, last_error
from fedadapt.errors import FedAdaptError


def _log(tmp_path, *lines: str):
    log = tmp_path / "worker.log"
    log.write_text("\n".join(lines) + "\n")
    return log


def test_a_worker_that_exits_at_start_up_three_times_in_a_row_ends_device_run(tmp_path):
    """It was restarted forever, each time as soon as it died, the reason only in its log."""
    log = _log(tmp_path, "INFO starting", "ERROR cannot listen on /x/worker.sock: denied")
    worker = Exits("warm worker", log, startup_limit=3)
    for _ in range(2):
        worker.start()
        worker.exited(1)  # restarted: messages run in the ClientApp meanwhile
    worker.start()
    with pytest.raises(FedAdaptError) as e:
        worker.exited(1)
    assert str(e.value) == (
        "the warm worker exited during start-up 3 times in a row (code 1): "
        "ERROR cannot listen on /x/worker.sock: denied"
    )


def test_exits_after_a_healthy_start_are_restarted_until_they_come_too_often(tmp_path, monkeypatch):
    log = _log(tmp_path, "INFO serving", "INFO lost the SuperLink")
    node = Exits("SuperNode", log)
    clock = [1000.0]
    monkeypatch.setattr(exits.time, "monotonic", lambda: clock[0])
    for _ in range(exits.CRASH_LIMIT - 1):
        node.start()
        clock[0] += 60  # up a minute each time: a healthy start
        node.exited(-9)
    clock[0] += exits.CRASH_WINDOW_S  # the earlier exits leave the window: no limit reached
    node.start()
    clock[0] += 60
    node.exited(-9)
    for _ in range(exits.CRASH_LIMIT - 2):
        node.start()
        clock[0] += 60
        node.exited(-9)
    node.start()
    clock[0] += 60
    with pytest.raises(FedAdaptError, match=r"exited 5 times within 10 minutes \(last code -9\)"):
        node.exited(-9)


def test_a_start_up_exit_between_healthy_ones_is_not_in_a_row(tmp_path, monkeypatch):
    worker = Exits("warm worker", _log(tmp_path, "x"), startup_limit=2)
    clock = [0.0]
    monkeypatch.setattr(exits.time, "monotonic", lambda: clock[0])
    worker.start()
    worker.exited(1)  # at once: one start-up exit
    worker.start()
    clock[0] += 400
    worker.exited(1)  # after a healthy start: the count in a row starts over
    worker.start()
    worker.exited(1)  # one in a row again, not two


def test_last_error_prefers_the_last_error_line(tmp_path):
    log = _log(tmp_path, "INFO a", "ERROR first", "ERROR second", "INFO b")
    assert last_error(log) == "ERROR second"
    assert last_error(_log(tmp_path, "INFO only")) == "INFO only"
    assert last_error(tmp_path / "none.log").startswith("(no log at ")
