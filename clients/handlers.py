"""The ClientApp's real work: trains adapters and replies with deltas; personal state stays here.

Split from `clients/app.py` so that the app Flower imports for every message stays cheap (no
torch): a deployed device's warm worker (`clients/warm_worker.py`) imports this module once
and runs these handlers for every message; a simulation, or a device without a worker, runs
them in the ClientApp process itself.

Handlers, one per message type (Flower's Message API):
- `query`: which data partition this node holds, so the server can sample by partition.
- `train`: phase `adapter` replies with the encoded delta of the global adapter only; phase
  `full` (the full-model FedAvg baseline) replies with every weight, as stock FedAvg expects.
  A SecAgg+ round's train message (Flower's `secaggplus_mod` runs around it in the app)
  takes the legacy FitIns/FitRes shape.
- `evaluate`: accuracies on this node's own test split; with `baselines`, also the
  local-only, zero-shot and local-majority baselines.

The personal adapter and head, and the int8 codec's error-feedback residual, live in
`context.state` (this node's state) and never enter a reply. A deployed SuperNode started
with `device-dir` in its node config also keeps them there (safetensors, written
atomically), so a restarted SuperNode resumes with its personal adapter intact.

A SuperNode whose node config names `data-dir` (absolute, or relative to `device-dir`)
trains on the device's own files there (`fedadapt.data.local_files`); without it, on the demo
partition `partition-id`. A device that cannot take part (too few usable examples, an
unreadable file) replies with an error, which the server counts as a rejected reply.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from safetensors.torch import load_file, save

from fedadapt import hetlora
from fedadapt.atomic import PRIVATE, atomic_write_bytes, private_folder
from fedadapt.clients import status
from fedadapt.clients.attacks import attack, claimed_examples, malicious_clients
from fedadapt.clients.device import Device
from fedadapt.clients.personalized import after_evaluation, after_training
from fedadapt.codecs import ErrorFeedback
from fedadapt.data import local_files
from fedadapt.deltas import check_delta, clip
from fedadapt.errors import DeviceError, FedAdaptError
from fedadapt.model_setup import label_names
from fedadapt.ray_nodes import worker_record
from fedadapt.records import pack_delta, record_to_state, state_to_record
from fedadapt.simconfig import PERSONAL_ADAPTER_MODES, SimConfig

log = logging.getLogger("fedadapt.clients")


def _setup(message: Message, context: Context) -> tuple[SimConfig, int, int, str]:
    cfg = SimConfig.from_run_config(dict(context.run_config))
    pid = _partition_id(context)
    if cfg.lora_tier_ranks:  # HetLoRA: this device trains its tier's rank
        cfg = hetlora.client_config(
            cfg, hetlora.client_rank(cfg, pid, context.node_config.get("tier"))
        )
    conf = message.content["config"]
    return cfg, pid, int(conf["server-round"]), str(conf["phase"])


def _arrays(message: Message, cfg: SimConfig) -> dict[str, torch.Tensor]:
    """The message's global state, cut to this device's rank under HetLoRA tiers."""
    state = record_to_state(message.content["arrays"])
    return hetlora.truncate(state, cfg.lora_r) if cfg.lora_tier_ranks else state


def _partition_id(context: Context) -> int:
    """The node config's `partition-id`: this device's number in the server's report."""
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FedAdaptError(f"node config: partition-id must be an integer >= 0, got {value!r}")
    return value


def _data_dir(context: Context) -> Path | None:
    """The node config's `data-dir`: absolute, or relative to `device-dir`."""
    data = context.node_config.get("data-dir")
    if not data:
        return None
    device = context.node_config.get("device-dir")
    return Path(str(device)) / str(data) if device else Path(str(data))


def _device(cfg: SimConfig, pid: int, context: Context, full_model: bool = False) -> Device:
    """This node's device over its own data folder, re-read every round (only when a file
    changed), or over the demo partition `partition-id` when the node config names none."""
    folder = _data_dir(context)
    if folder is None:
        return Device.create(cfg, pid, full_model)
    device = context.node_config.get("device-dir")
    # the device's own secret keys its split; a folder without a device keeps the seed
    key = local_files.split_key(Path(str(device))) if device else str(cfg.seed)
    try:
        local = local_files.load(
            folder, label_names(cfg.dataset), cfg.test_fraction, key, cfg.min_examples
        )
    finally:
        if device and (read := local_files.last_read()) is not None:
            status.note(device, "data", **read)  # what it read, even when too few
    if device:  # the rollout agent scores versions on this same held-out side
        local_files.record_split(Path(str(device)), cfg.test_fraction, key)
    return Device.create(cfg, pid, full_model, data=local.data)


def _error_reply(handler: Callable[[Message, Context], Message]):
    """Any failure becomes an error reply, which the server counts as a rejected reply;
    nothing escapes to stop the SuperNode.

    The reply carries a code and counts only (`DeviceError.wire`), never an exception's
    text: that may name a data file or quote a row of the user's data. The full text is
    logged on a deployed device (its own log in its folder), where its owner reads it.
    """

    @functools.wraps(handler)
    def wrapped(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as e:  # every failure: Flower would send its text
            reason = wire_reason(e)
            kind = message.metadata.message_type
            if device := context.node_config.get("device-dir"):
                bug = not isinstance(e, FedAdaptError)  # a bug keeps its traceback in the log
                log.warning("%s failed (%s): %s", kind, reason, e, exc_info=bug)
                status.note(device, "error", message_type=kind, code=reason, message=str(e))
            else:
                log.warning("%s failed: %s", kind, reason)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    return wrapped


def wire_reason(e: Exception) -> str:
    """What an error reply may say: a device error's code and counts, else only its kind."""
    if isinstance(e, DeviceError):
        return e.wire()
    return "client-error" if isinstance(e, FedAdaptError) else "client-crash"


def _device_file(context: Context, key: str) -> Path | None:
    folder = context.node_config.get("device-dir")
    return Path(str(folder)) / f"{key}.safetensors" if folder else None


def _load(context: Context, key: str):
    if key in context.state:
        return record_to_state(context.state[key])
    path = _device_file(context, key)
    if path is not None and path.exists():
        state = load_file(path)
        context.state[key] = state_to_record(state)
        return state
    return None


def _keep(context: Context, key: str, state) -> None:
    """Into the node's state and, on a device, its folder: never into a reply."""
    context.state[key] = state_to_record(state)
    path = _device_file(context, key)
    if path is not None:
        private_folder(path.parent)
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in state.items()}), PRIVATE)


def _serve(context: Context, write: Callable[[Path], None]) -> None:
    """On a deployed device, `write(device folder)` the files its runtime serves (nothing in
    a simulation, so the callers build what they write inside `write`). A file that cannot
    be written (a graph exported for another adapter config, a full disk) is logged and left
    as it was (atomic writes): the round's reply goes all the same."""
    folder = context.node_config.get("device-dir")
    if not folder:
        return
    try:
        write(Path(str(folder)))
    except (FedAdaptError, OSError) as e:
        log.warning("personalized model not written: %s", e)


def _serve_locally(context: Context, arrays, out: dict, device: Device, rnd: int) -> None:
    """On a deployed device: the round's global adapter, the personalized ORT file and the
    accuracies torch measured, kept in the device folder (`clients/personalized.py`)."""
    figures = {
        "round": rnd,
        "personalization": device.cfg.personalization,  # which personal parts the file uses
        "global_accuracy": out["global_accuracy"],
        "personalized_accuracy": out["personalized_accuracy"],
        "examples_train": len(device.data.train_labels),
        "examples_heldout": len(device.data.test_labels),
    }
    _serve(context, lambda folder: after_evaluation(folder, _numpy(arrays), figures))
    status.note(
        context.node_config.get("device-dir"),
        "evaluated",
        round=rnd,
        global_accuracy=figures["global_accuracy"],
        personalized_accuracy=figures["personalized_accuracy"],
    )


def _numpy(arrays: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


@_error_reply
def query(message: Message, context: Context) -> Message:
    """Reply with this node's `partition-id`, so the server can sample and report by partition."""
    pid = _partition_id(context)
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=message)


def _train_adapter(cfg: SimConfig, pid: int, rnd: int, arrays, context: Context):
    """Train the global adapter (and the personal part); the delta is all that may leave."""
    device = _device(cfg, pid, context)
    delta, stats = device.train_global(arrays, rnd)
    if pid in malicious_clients(cfg.num_clients, cfg.malicious_fraction, cfg.seed):
        delta = attack(delta, cfg.attack, seed=rnd * 100_003 + pid)
        claim = claimed_examples(cfg.attack, stats["examples"], cfg.max_num_examples)
        stats = {**stats, "examples": claim}
    if cfg.personalization in PERSONAL_ADAPTER_MODES:
        personal = device.train_personal(arrays, _load(context, "personal"), rnd)
        _keep(context, "personal", personal)
    elif cfg.personalization == "ditto":
        _keep(context, "ditto", device.train_ditto(arrays, _load(context, "ditto"), rnd))
    status.note(
        context.node_config.get("device-dir"),
        "trained",
        round=rnd,
        examples=stats["examples"],
        loss=stats["train_loss"],
    )
    # a device serves what it trained
    _serve(
        context,
        lambda folder: after_training(folder, _numpy(arrays), cfg.personalization, rnd),
    )
    return device, delta, stats


def _personal_key(cfg: SimConfig) -> str:
    """Where the personal state is kept: Ditto's copy of the global adapter apart from
    FedRep's branch, so neither is ever taken for the other (`clients/personalized.py`)."""
    return "ditto" if cfg.personalization == "ditto" else "personal"


@_error_reply
def train(message: Message, context: Context) -> Message:
    """One round's training. Phase `adapter`: the encoded delta of the global adapter, with
    `num-examples`, `train_loss` and the base's hash; the personal part is trained and kept
    here. Phase `full`: every weight, for the full-model FedAvg baseline. A SecAgg+ message
    goes the legacy way (`_train_secagg`). Any failure is an error reply.
    """
    if RECORD_KEY_CONFIGS in message.content:
        return _train_secagg(message, context)
    cfg, pid, rnd, phase = _setup(message, context)
    arrays = _arrays(message, cfg)
    if phase == "full":
        device = _device(cfg, pid, context, full_model=True)
        state, stats = device.train_full(arrays, rnd)
        metrics = {"num-examples": stats["examples"], "train_loss": stats["train_loss"]}
        content = {"arrays": state_to_record(state), "metrics": MetricRecord(metrics)}
        return Message(RecordDict(content), reply_to=message)

    device, delta, stats = _train_adapter(cfg, pid, rnd, arrays, context)
    feedback = ErrorFeedback(cfg.codec)
    feedback.residual = _load(context, "ef-residual") or {}
    blob = feedback.encode(delta)
    if cfg.codec == "int8":
        _keep(context, "ef-residual", feedback.residual)
    metrics = MetricRecord(
        {
            "num-examples": stats["examples"],
            "dp-weight": 1.0,  # accounted central DP needs equal weights
            "train_loss": stats["train_loss"],
            "partition-id": pid,
        }
    )
    meta = {"base-sha256": device.model.base.sha256, "codec": cfg.codec}
    if cfg.lora_tier_ranks:
        meta[hetlora.RANK_KEY] = cfg.lora_r
    content = RecordDict(
        {"arrays": pack_delta(blob), "metrics": metrics, "delta-meta": ConfigRecord(meta)}
        | worker_record()  # which Ray node trained, in a simulation
    )
    return Message(content, reply_to=message)


def _train_secagg(message: Message, context: Context) -> Message:
    """A SecAgg+ round's training step, in the legacy FitIns/FitRes shape the mod expects.

    The delta is clipped here, on the device (the server never sees it alone), and checked
    to be finite: one NaN would poison the masked sum of every client.
    """
    cfg = SimConfig.from_run_config(dict(context.run_config))
    pid = _partition_id(context)
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    names = str(fitins.config["names"]).split("\n")
    arrays = {
        k: torch.from_numpy(a.copy())
        for k, a in zip(names, parameters_to_ndarrays(fitins.parameters), strict=True)
    }
    rnd = int(fitins.config["server-round"])
    _, delta, stats = _train_adapter(cfg, pid, rnd, arrays, context)
    delta = clip(delta, cfg.clip_norm) if cfg.clip_norm > 0 else delta
    check_delta(delta, arrays)
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([delta[k].numpy() for k in sorted(delta)]),
        num_examples=int(stats["examples"]),
        metrics={"train_loss": float(stats["train_loss"])},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


@_error_reply
def evaluate(message: Message, context: Context) -> Message:
    """Accuracies on this node's test split, with `num-examples` (its size). Phase `adapter`:
    the global and the personalized model (with `baselines` in the config, the baselines
    too); a deployed device also keeps the round's files for its runtime. Phase `full`: the
    full-model baseline. Any failure is an error reply.
    """
    cfg, pid, rnd, phase = _setup(message, context)
    arrays = _arrays(message, cfg)
    if phase == "full":
        device = _device(cfg, pid, context, full_model=True)
        out = device.evaluate_full(arrays, rnd)
    else:
        device = _device(cfg, pid, context)
        key = _personal_key(cfg)
        out, personal = device.evaluate(arrays, _load(context, key), rnd)
        if personal is not None:
            _keep(context, key, personal)
        if device.head_bias is not None:
            _keep(context, "head-bias", {"head_bias": device.head_bias})
        _serve_locally(context, arrays, out, device, rnd)
        if message.content["config"].get("baselines", False):
            out.update(device.baselines())
    n = len(device.data.test_labels)
    metrics = MetricRecord({**out, "num-examples": n, "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


# What a message's category (`message_type` before any `.action`) runs.
HANDLERS: dict[str, Callable[[Message, Context], Message]] = {
    "query": query,
    "train": train,
    "evaluate": evaluate,
}
