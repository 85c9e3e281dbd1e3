"""What a device tells its own operator: events in its folder, `device status`, and the
console lines `device run` prints."""

from __future__ import annotations

import os
import stat

from fedadapt.clients import status


def test_events_are_kept_per_kind_private_and_read_back(tmp_path):
    status.note(tmp_path, "trained", round=2, examples=24, loss=0.41)
    status.note(tmp_path, "trained", round=3, examples=24, loss=0.38)
    status.note(tmp_path, "error", message_type="train", code="x", message="bad.csv: no header")
    status.note(tmp_path, "nonsense", x=1)  # unknown kinds are not kept
    events = status.read(tmp_path)
    assert set(events) == {"trained", "error"} and events["trained"]["round"] == 3
    assert stat.S_IMODE(os.stat(tmp_path / status.STATUS_FILE).st_mode) == 0o600
    (tmp_path / status.STATUS_FILE).write_text("{torn")
    assert status.read(tmp_path) == {}  # a torn file is no status, and the next note rewrites it
    status.note(tmp_path, "update", ok=True, message="up to date")
    assert set(status.read(tmp_path)) == {"update"}


def test_device_status_names_what_the_device_runs_and_what_happened(tmp_path, capsys):
    from fedadapt.cli.app import main

    (tmp_path / "state.json").write_text('{"name": "global", "version": 4, "previous": 3}')
    status.note(tmp_path, "data", usable=30, train=21, held_out=9, bad_rows=2,
                bad_by_file={"mine.csv": 2})  # fmt: skip
    status.note(tmp_path, "trained", round=5, examples=21, loss=0.3)
    assert main(["device", "status", "--device-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "installed: version 4 of 'global' (rollback to 3)" in out
    assert "last round trained: trained round 5: 21 examples, loss 0.3000" in out
    read = "data: read 30 usable examples (21 train, 9 held out), 2 rows skipped (mine.csv 2)"
    assert read in out
    assert "SuperNode: not running" in out and "last error: none yet" in out


def test_device_run_prints_one_line_per_new_event(tmp_path, capsys):
    from fedadapt.clients.service import DeviceService, ServiceOptions
    from fedadapt.launch.certs import make_certs

    make_certs(tmp_path / "certs", ["127.0.0.1"], 1)
    device = tmp_path / "device"
    status.note(device, "trained", round=1, examples=10, loss=0.5)  # before the start: old news
    service = DeviceService(
        ServiceOptions(
            device_dir=device,
            superlink="127.0.0.1:9",
            root_cert=tmp_path / "certs" / "ca.crt",
            node_key=tmp_path / "certs" / "supernodes" / "node-1",
            demo_data=True,
        )
    )
    service.step(now=0.0)
    assert "trained round" not in capsys.readouterr().err
    status.note(device, "trained", round=2, examples=10, loss=0.4)
    status.note(device, "error", message_type="evaluate", code="c", message="too few examples")
    service.step(now=1.0)
    err = capsys.readouterr().err
    assert "trained round 2: 10 examples, loss 0.4000" in err
    assert "evaluate failed: too few examples" in err
    service.step(now=2.0)
    assert capsys.readouterr().err == ""  # nothing new, nothing printed
