"""Nothing of the user's leaves the device: a canary planted in every place a device's data
can show up (its folder's path, its files' names, its rows, its labels, a header-less CSV's
first row) appears in no serialized reply of any kind and in no line the server logs about
those replies. Personal files are the owner's alone."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from fedadapt.clients.app import app
from fedadapt.data.partitions import client_data
from fedadapt.errors import loggable_reason
from fedadapt.model_setup import build_fresh_global, trainable_global_keys
from fedadapt.records import state_to_record
from fedadapt.server.evaluation import log as evaluation_log
from fedadapt.server.replies import screen
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

CANARY = "CANARY-7f3e"
CFG = SimConfig(**{**SMALL.to_dict(), "personalization": "fedrep"})


def _messages() -> list[Message]:
    arrays = state_to_record(build_fresh_global(CFG))
    query = Message(RecordDict({"config": ConfigRecord({"server-round": 0})}), 7, "query")
    train = RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"server-round": 1, "phase": "adapter"})}
    )
    evaluate = RecordDict(
        {
            "arrays": arrays,
            "config": ConfigRecord({"server-round": 1, "phase": "adapter", "baselines": False}),
        }
    )
    return [query, Message(train, 7, "train"), Message(evaluate, 7, "evaluate")]


def _rows(n: int) -> list[tuple[str, str]]:
    d = client_data(CFG, 0)
    texts, labels = d.train_texts + d.test_texts, d.train_labels + d.test_labels
    return [(f"{CANARY} {t}", d.label_names[y]) for t, y in zip(texts[:n], labels[:n], strict=True)]


def _jsonl(rows: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)


# Every way a device's data folder can be: usable, or failing each way the loader knows.
FOLDERS = {
    "usable": lambda d: (d / f"{CANARY}.jsonl").write_text(_jsonl(_rows(30))),
    "bad rows": lambda d: (d / f"{CANARY}.jsonl").write_text(
        _jsonl(_rows(30))
        + json.dumps({"text": CANARY, "label": CANARY})
        + "\n{not json "
        + CANARY
        + "\n"
    ),
    "too few": lambda d: (d / f"{CANARY}.jsonl").write_text(_jsonl(_rows(3))),
    "no header": lambda d: (d / f"{CANARY}.csv").write_text(f"{CANARY} my own words,1\nx,0\n"),
    "bad header": lambda d: (d / "a.csv").write_text(f"{CANARY},label\nx,0\n"),
    "not utf-8": lambda d: (d / f"{CANARY}.jsonl").write_bytes(CANARY.encode() + b"\xff\n"),
    "a folder": lambda d: (d / f"{CANARY}.jsonl").mkdir(),
    "a link": lambda d: (d / f"{CANARY}.jsonl").symlink_to(d.parent / f"{CANARY}-outside"),
    "a pipe": lambda d: os.mkfifo(d / f"{CANARY}.jsonl"),
    "no folder": lambda d: d.rmdir(),
}


@pytest.mark.parametrize("case", sorted(FOLDERS))
def test_the_canary_is_in_no_reply_and_no_server_log(tmp_path, case, caplog):
    device = tmp_path / f"device-{CANARY}"
    data = device / f"data-{CANARY}"
    data.mkdir(parents=True)
    FOLDERS[case](data)
    ctx = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 2, "device-dir": str(device), "data-dir": data.name},
        state=RecordDict(),
        run_config=CFG.to_dict(),
    )
    replies = [app(m, ctx) for m in _messages()]
    for reply in replies:
        assert CANARY.encode() not in message_to_proto(reply).SerializeToString(), case
    caplog.clear()  # what follows is the server's side only
    with caplog.at_level(logging.DEBUG):
        global_state = build_fresh_global(CFG)
        keys = set(trainable_global_keys(CFG))
        screen([replies[1]], global_state, keys, "sha", 10**7)
        if replies[2].has_error():  # what server/evaluation.py logs of a failed evaluation
            evaluation_log.warning(
                "evaluation failed: %s", loggable_reason(replies[2].error.reason)
            )
    assert CANARY not in caplog.text, case
    assert (case in ("usable", "bad rows")) == (not replies[1].has_error())  # trained or not


def test_the_server_withholds_a_reason_that_is_not_a_code(caplog):
    """An older or hostile client's free text never reaches the server's log."""
    from flwr.app import Error

    train = _messages()[1]
    reply = Message(Error(0, f"cannot read /home/alice/{CANARY}.csv"), reply_to=train)
    with caplog.at_level(logging.DEBUG):
        screen([reply], build_fresh_global(CFG), set(trainable_global_keys(CFG)), "sha", 10**7)
    assert CANARY not in caplog.text
    assert "characters withheld" in caplog.text


def test_personal_files_are_the_owners_alone_whatever_the_umask(tmp_path):
    device = tmp_path / "dev"
    (device / "data").mkdir(parents=True)
    (device / "data" / "mine.jsonl").write_text(_jsonl(_rows(30)))
    device.chmod(0o755)
    old = os.umask(0o022)
    try:
        ctx = Context(
            run_id=1,
            node_id=7,
            node_config={"partition-id": 2, "device-dir": str(device), "data-dir": "data"},
            state=RecordDict(),
            run_config=CFG.to_dict(),
        )
        for m in _messages()[1:]:
            assert not app(m, ctx).has_error()
    finally:
        os.umask(old)
    assert stat.S_IMODE(device.stat().st_mode) == 0o700
    written = [p for p in device.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"personal.safetensors", "split.json"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {
        p.name: 0o600 for p in written
    }
