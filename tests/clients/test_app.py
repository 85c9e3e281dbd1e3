"""The ClientApp's messages, inspected: what crosses the wire is adapter deltas only."""

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from fedadapt.base.checkpoint import model_dir
from fedadapt.clients.app import app
from fedadapt.codecs import decode
from fedadapt.data import local_files
from fedadapt.data.partitions import client_data
from fedadapt.model_setup import build_fresh_global, trainable_global_keys
from fedadapt.records import delta_blob, state_to_record
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

CFG = SimConfig(**{**SMALL.to_dict(), "codec": "int8", "personalization": "fedrep"})


def _context():
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 2},
        state=RecordDict(),
        run_config=CFG.to_dict(),
    )


def _train_message():
    content = RecordDict(
        {
            "arrays": state_to_record(build_fresh_global(CFG)),
            "config": ConfigRecord({"server-round": 1, "phase": "adapter"}),
        }
    )
    return Message(content, dst_node_id=7, message_type="train")


def test_no_base_model_tensor_crosses_the_wire():
    from safetensors import safe_open

    with safe_open(model_dir() / "model.safetensors", "pt") as f:
        base_names = set(f.keys())
    ctx = _context()
    msg = _train_message()
    reply = app(msg, ctx)
    sent = msg.content["arrays"]
    assert not base_names & set(sent.keys())
    assert not any(
        k.startswith(("embeddings.", "encoder.")) and "adapter" not in k and "head" not in k
        for k in sent
    )
    delta = decode(delta_blob(reply.content["arrays"]))
    assert not base_names & set(delta)
    assert set(reply.content.keys()) == {"arrays", "metrics", "delta-meta"}
    # exactly one adapter's trainable tensors go up; the personal part and the int8
    # error-feedback residual stay in the node's state
    assert set(delta) == set(trainable_global_keys(CFG))
    assert "personal" in ctx.state and "ef-residual" in ctx.state


def test_reply_metrics_have_the_same_keys_every_time():
    ctx = _context()
    keys = {tuple(sorted(app(_train_message(), ctx).content["metrics"].keys())) for _ in range(2)}
    assert len(keys) == 1


def test_a_restarted_node_finds_its_personal_state_in_its_device_dir(tmp_path):
    import torch

    from fedadapt.clients.handlers import _load

    def ctx():
        return Context(
            run_id=1,
            node_id=7,
            node_config={"partition-id": 2, "device-dir": str(tmp_path / "dev")},
            state=RecordDict(),
            run_config=CFG.to_dict(),
        )

    first = ctx()
    app(_train_message(), first)
    assert (tmp_path / "dev" / "personal.safetensors").exists()
    assert (tmp_path / "dev" / "ef-residual.safetensors").exists()
    restarted = ctx()  # a new process: empty node state, same device folder
    before, after = _load(first, "personal"), _load(restarted, "personal")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- a device's own data folder --------------------------------------------------------------


def _device_context(tmp_path, data_dir="data"):
    node_config = {"partition-id": 2, "device-dir": str(tmp_path / "dev"), "data-dir": data_dir}
    return Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=CFG.to_dict()
    )


def _evaluate_message():
    content = RecordDict(
        {
            "arrays": state_to_record(build_fresh_global(CFG)),
            "config": ConfigRecord({"server-round": 1, "phase": "adapter", "baselines": False}),
        }
    )
    return Message(content, dst_node_id=7, message_type="evaluate")


def _write_own_data(tmp_path, rows: int) -> list[str]:
    """The device's files: another partition's snippets, half JSONL (names), half CSV (ids)."""
    import csv
    import json

    d = client_data(CFG, 0)
    texts = (d.train_texts + d.test_texts)[:rows]
    labels = (d.train_labels + d.test_labels)[:rows]
    folder = tmp_path / "dev" / "data"
    folder.mkdir(parents=True)
    half = rows // 2
    with (folder / "mine.jsonl").open("w") as f:
        for t, y in zip(texts[:half], labels[:half], strict=True):
            f.write(json.dumps({"text": t, "label": d.label_names[y]}) + "\n")
    with (folder / "more.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts[half:], labels[half:], strict=True))
    return texts


def test_a_device_trains_on_its_own_files_and_no_text_crosses_the_wire(tmp_path):
    texts = _write_own_data(tmp_path, 24)
    ctx = _device_context(tmp_path)
    key = local_files.split_key(tmp_path / "dev")  # the device's own secret
    local = local_files.load(
        tmp_path / "dev" / "data", ["rotten", "fresh"], CFG.test_fraction, key, 4
    )
    assert local.examples == 24 and not local.bad_rows
    trained = app(_train_message(), ctx)
    assert trained.content["metrics"]["num-examples"] == len(local.data.train_texts)
    # the split it trained with is kept for the rollout agent's held-out scoring
    assert local_files.recorded_split(tmp_path / "dev") == (CFG.test_fraction, key)
    evaluated = app(_evaluate_message(), ctx)
    assert evaluated.content["metrics"]["num-examples"] == len(local.data.test_texts)
    assert 0.0 <= evaluated.content["metrics"]["personalized_accuracy"] <= 1.0
    for reply in (trained, evaluated):
        wire = message_to_proto(reply).SerializeToString()
        assert not [t for t in texts if t.encode() in wire]
    # the check can fail: a text put in a record is there, verbatim, on the wire
    leak = Message(RecordDict({"c": ConfigRecord({"t": texts[0]})}), reply_to=_train_message())
    assert texts[0].encode() in message_to_proto(leak).SerializeToString()


def test_the_split_is_the_devices_own_whatever_the_runs_seed(tmp_path):
    """It was keyed by the server's seed: another run's seed reshuffled it."""
    _write_own_data(tmp_path, 24)
    counts = set()
    for seed in (0, 1):
        ctx = _device_context(tmp_path)
        ctx.run_config = {**CFG.to_dict(), "seed": seed}
        counts.add(app(_train_message(), ctx).content["metrics"]["num-examples"])
        assert local_files.recorded_split(tmp_path / "dev")[1] == local_files.split_key(
            tmp_path / "dev"
        )
    assert len(counts) == 1
    key_file = tmp_path / "dev" / local_files.SPLIT_KEY_FILE
    assert oct(key_file.stat().st_mode & 0o777) == oct(0o600)
    assert local_files.split_key(tmp_path / "other") != local_files.split_key(tmp_path / "dev")


def test_too_few_examples_is_an_error_reply_that_the_server_rejects(tmp_path):
    from fedadapt.server.replies import screen

    _write_own_data(tmp_path, 3)
    ctx = _device_context(tmp_path)
    for msg in (_train_message(), _evaluate_message()):
        reply = app(msg, ctx)  # no exception escapes the ClientApp
        assert reply.has_error()  # a code and counts only: what the server may see
        code, *counts = reply.error.reason.split()
        got = dict(c.split("=") for c in counts)  # the split's sides depend on its random key
        assert code == "too-few-examples" and int(got["train"]) + int(got["held_out"]) == 3
        assert (got["usable"], got["bad_rows"], got["needs"]) == ("3", "0", str(CFG.min_examples))
    global_state = build_fresh_global(CFG)
    trainable = set(trainable_global_keys(CFG))
    screened = screen([app(_train_message(), ctx)], global_state, trainable, "sha", 10**7)
    assert dict(screened.rejected) == {"client-error": 1}


def test_an_unreadable_data_file_is_an_error_reply_with_a_code_not_its_name(tmp_path, caplog):
    (tmp_path / "dev" / "data" / "broken.jsonl").mkdir(parents=True)
    reply = app(_train_message(), _device_context(tmp_path))
    assert reply.has_error()
    assert reply.error.reason == "data-not-a-file files=1"
    # the device's own log names the file, for its owner
    assert str(tmp_path / "dev" / "data" / "broken.jsonl") in caplog.text


def test_the_data_dir_may_be_absolute(tmp_path):
    _write_own_data(tmp_path, 3)
    reply = app(_train_message(), _device_context(tmp_path, str(tmp_path / "dev" / "data")))
    assert reply.error.reason.startswith("too-few-examples usable=3 ")  # the folder was read


def test_a_node_config_without_a_partition_id_is_an_error_reply(caplog):
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    query = Message(RecordDict({"config": ConfigRecord({"server-round": 0})}), 7, "query")
    for msg in (query, _train_message()):
        reply = app(msg, ctx)
        assert reply.error.reason == "client-error"
    assert "partition-id" not in caplog.text  # not a device: the reason only, no text


def test_the_app_flower_imports_per_message_imports_no_torch():
    """Flower 1.42 imports the ClientApp in a fresh process for every message; torch (1-2 s
    on a device) belongs to the warm worker and the handlers only."""
    import subprocess
    import sys

    code = (
        "import sys, flwr.app, flwr.clientapp\n"
        "import fedadapt.clients.app\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'fedadapt.clients.handlers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
