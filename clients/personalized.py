"""The device's personalized adapter file: the global adapter plus this device's personal part.

Needs only numpy, safetensors and onnxruntime, so `fetch` and `rollback` keep it in step on
an inference-only device without torch. The personal part is what the ClientApp keeps in the
device folder:
- `head-bias.safetensors` (`head_bias`): a per-class offset fitted on the device; it folds
  into the head's bias tensor (global head bias + offset): the graph needs no input for it;
- `personal.safetensors`, adapter tensors and a head (FedRep): a personal branch stacked on
  the global one. A device
  graph is exported with `Stack(global, personal)` (`runtime.json` names the stack), its
  tensors as `shared:<name>` (global) and `personal:<name>`; the personal defaults baked in
  graph are a fresh personal adapter, which is the identity, so the global file leaves them
  out;
- `ditto.safetensors` (Ditto): the device's own copy of the global adapter and head, same
  tensor names; it takes the global's place in the graph (the personal branch of a stacked
  graph keeps its identity defaults). A newer global reaches it only through the next local
  training, as Ditto means.

Which parts apply is the mode the last round recorded in `personalization.json` (written
at each training round and each evaluation; a folder from before it has the mode in
`evaluation.json`), so a file left over from another mode is never served; without a
recorded mode every part present applies.

Device folder, beside what the updater and the exporter write:

    personal.safetensors         the personal adapter and head (ClientApp, after each round)
    head-bias.safetensors        the fitted head bias (ClientApp, after each evaluation)
    ditto.safetensors            Ditto's personal adapter and head (ClientApp, each round)
    global.safetensors           the newest global adapter a round brought (ClientApp)
    global.onnx_adapter          that global, for the graph (no signed version installed)
    personalized.onnx_adapter    the personalized file of the global in use
    personalization.json         the mode and round of the personal parts served
    evaluation.json              the accuracies torch measured at the last evaluation

The global in use is the signed version `state.json` names, else the newest round's
(version 0). The personalized file carries that version, so the runtime can tell a stale one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy

from fedadapt.atomic import PRIVATE, atomic_write_bytes, atomic_write_text
from fedadapt.errors import AdapterLoadError
from fedadapt.onnx_adapter import RUNTIME_FILE, write_onnx_adapter

PERSONAL_FILE = "personal.safetensors"
HEAD_BIAS_FILE = "head-bias.safetensors"
DITTO_FILE = "ditto.safetensors"
ROUND_GLOBAL_FILE = "global.safetensors"
GLOBAL_ONNX = "global.onnx_adapter"
EVALUATION_FILE = "evaluation.json"
MODE_FILE = "personalization.json"
PERSONALIZED_ONNX = "personalized.onnx_adapter"
HEAD_BIAS = "head_bias"
HEAD = "head."
STATE_FILE = "state.json"

Tensors = dict[str, np.ndarray]
# The personal files each personalization mode serves (fedadapt.simconfig.PERSONALIZATIONS).
MODE_FILES = {
    "head-bias": (HEAD_BIAS_FILE,),
    "fedrep": (PERSONAL_FILE,),
    "fedrep-head-bias": (PERSONAL_FILE, HEAD_BIAS_FILE),
    "ditto": (DITTO_FILE,),
    "finetune": (),  # nothing kept: the fine-tuned copy lives only for one evaluation
}
NOTHING_TO_SERVE = ("finetune",)
ALL_FILES = (PERSONAL_FILE, HEAD_BIAS_FILE, DITTO_FILE)


def graph_tensors(
    global_: Tensors, personal: Tensors | None = None, stack: list[str] | None = None
) -> Tensors:
    """The tensors a device graph takes for `global_` plus an optional personal part.

    `stack` is the graph's `Stack` (from `runtime.json`), None for a single-adapter graph.
    """
    personal = dict(personal or {})
    bias = personal.pop(HEAD_BIAS, None)
    heads = {k: v for k, v in global_.items() if k.startswith(HEAD)}
    body = {k: v for k, v in global_.items() if not k.startswith(HEAD)}
    branch = {k: v for k, v in personal.items() if not k.startswith(HEAD)}
    if stack:
        first, second = stack
        out = {f"{first}:{k}": v for k, v in body.items()}
        out.update({f"{second}:{k}": v for k, v in branch.items()})
        if branch:  # a personal branch brings its own head (FedRep)
            heads = {k: v for k, v in personal.items() if k.startswith(HEAD)} or heads
    else:
        if branch:
            raise AdapterLoadError(
                "this device's graph has no personal branch; export it with "
                "`Stack(global, personal)` to serve a personal adapter"
            )
        out = dict(body)
    out.update(heads)
    if bias is not None:
        key = HEAD + "bias"
        if key not in out or out[key].shape != bias.shape:
            raise AdapterLoadError(
                f"head bias of shape {tuple(bias.shape)} does not fit the head "
                f"{tuple(out[key].shape) if key in out else '(none)'}"
            )
        out[key] = (out[key].astype(np.float32) + bias.astype(np.float32)).astype(np.float32)
    return out


def _load(path: Path) -> Tensors | None:
    if not path.exists():
        return None
    try:
        return safetensors.numpy.load_file(str(path))
    except Exception as e:  # safetensors raises its own errors for torn or foreign files
        raise AdapterLoadError(f"{path} is not a readable safetensors file: {e}") from e


def recorded_mode(folder: Path) -> str | None:
    """The personalization mode the last round recorded, if any."""
    figures = folder / MODE_FILE
    if not figures.exists():
        figures = folder / EVALUATION_FILE
    try:
        recorded = json.loads(figures.read_text()) if figures.exists() else {}
        mode = recorded.get("personalization")
    except (OSError, ValueError, AttributeError) as e:
        raise AdapterLoadError(f"{figures} is not a readable evaluation record: {e}") from e
    if mode is not None and mode not in MODE_FILES:
        raise AdapterLoadError(f"{figures}: unknown personalization {mode!r}")
    return mode


def served_files(folder: Path) -> tuple[str, ...]:
    """The personal files of the mode the last round recorded (every one without)."""
    mode = recorded_mode(folder)
    return ALL_FILES if mode is None else MODE_FILES[mode]


def personal_part(folder: Path, files: tuple[str, ...] = ALL_FILES) -> Tensors | None:
    """The personal adapter (and head) and the head bias this device keeps, merged; only
    those of `files`."""
    personal = (_load(folder / PERSONAL_FILE) if PERSONAL_FILE in files else None) or {}
    bias = _load(folder / HEAD_BIAS_FILE) if HEAD_BIAS_FILE in files else None
    if bias is not None:
        if HEAD_BIAS not in bias:
            raise AdapterLoadError(f"{folder / HEAD_BIAS_FILE} holds no {HEAD_BIAS!r} tensor")
        personal[HEAD_BIAS] = bias[HEAD_BIAS]
    return personal or None


def ditto_global(folder: Path, global_: Tensors, files: tuple[str, ...]) -> Tensors:
    """Ditto's personal copy where the mode serves one, else `global_`; a copy that does not
    have the global's tensors (another adapter config) is refused, naming the file."""
    ditto = _load(folder / DITTO_FILE) if DITTO_FILE in files else None
    if ditto is None:
        return global_
    if set(ditto) != set(global_) or any(ditto[k].shape != global_[k].shape for k in global_):
        raise AdapterLoadError(
            f"{folder / DITTO_FILE} does not have the global adapter's tensors; "
            "it belongs to another adapter config"
        )
    return ditto


def installed_version(folder: Path) -> int | None:
    """The signed version `state.json` names (the updater's commit point), if any."""
    state = folder / STATE_FILE
    return json.loads(state.read_text()).get("version") if state.exists() else None


def global_in_use(folder: Path) -> tuple[int, Tensors] | None:
    """(version, tensors) of the global adapter the device serves: the installed signed
    version, else the newest round's (version 0), else None."""
    version = installed_version(folder)
    if version is not None:
        tensors = _load(folder / "versions" / f"v{version:04d}.safetensors")
        if tensors is None:
            raise AdapterLoadError(f"{folder}: installed version {version} has no adapter file")
        return version, tensors
    tensors = _load(folder / ROUND_GLOBAL_FILE)
    return None if tensors is None else (0, tensors)


def keep_round_global(folder: str | Path, tensors: Tensors) -> None:
    """Keep the global adapter a round brought, then refresh the files the runtime reads."""
    folder = Path(folder)
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write_bytes(folder / ROUND_GLOBAL_FILE, safetensors.numpy.save(contiguous), PRIVATE)
    refresh(folder)


def after_training(folder: str | Path, global_: Tensors, mode: str, rnd: int) -> None:
    """After a training round on a deployed device: the personal part it just trained is
    served at once, over the newest global it knows (the one the round brought), instead of
    waiting for the server's next evaluation."""
    folder = Path(folder)  # the mode first: it names the parts the personalized file serves
    record = {"personalization": mode, "round": rnd}
    atomic_write_text(folder / MODE_FILE, json.dumps(record, indent=2) + "\n", PRIVATE)
    keep_round_global(folder, global_)


def after_evaluation(folder: str | Path, global_: Tensors, figures: dict) -> None:
    """After an evaluation on a deployed device: the round's global, the personalized file,
    and what torch measured (numbers only), so the device can show ORT against torch."""
    folder = Path(folder)
    atomic_write_text(folder / EVALUATION_FILE, json.dumps(figures, indent=2) + "\n", PRIVATE)
    if "personalization" in figures:  # the ClientApp's figures always name it
        after_training(folder, global_, figures["personalization"], figures.get("round", 0))
    else:
        keep_round_global(folder, global_)


def refresh(folder: str | Path) -> Path | None:
    """Rewrite the personalized file (and a round global's file) for the global in use.

    Returns the personalized file, or None where the folder has no exported graph or no
    global yet. Called after each round, each fetch and each rollback.
    """
    folder = Path(folder)
    runtime = folder / RUNTIME_FILE
    if not runtime.exists():
        return None
    meta = json.loads(runtime.read_text())
    found = global_in_use(folder)
    if found is None:
        return None
    version, global_ = found
    stack, sha = meta.get("stack"), meta["base_sha256"]
    if version == 0:
        tensors = graph_tensors(global_, None, stack)
        write_onnx_adapter(folder / GLOBAL_ONNX, tensors, 0, sha, PRIVATE)
    if recorded_mode(folder) in NOTHING_TO_SERVE:
        # a copy of the global under the personalized name would claim a personalization
        # that evaluation.json measured on a model this device does not keep
        (folder / PERSONALIZED_ONNX).unlink(missing_ok=True)
        return None
    files = served_files(folder)
    tensors = graph_tensors(
        ditto_global(folder, global_, files), personal_part(folder, files), stack
    )
    return write_onnx_adapter(folder / PERSONALIZED_ONNX, tensors, version, sha, PRIVATE)
