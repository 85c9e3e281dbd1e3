"""The edge runtime: ONNX Runtime over the installed graph plus the active `.onnx_adapter`.

Needs only onnxruntime, numpy and tokenizers (no torch), so it is what a device ships.
Swapping adapters never recreates the session: a new `LoraAdapter` is loaded and set on the
run options. The adapter object is kept referenced here, because ORT silently runs with the
graph's defaults when a `LoraAdapter` it was given has been garbage-collected.

Device folder (written by `fedadapt export`, updated by `fedadapt fetch`):

    runtime.json                 base SHA-256, labels, token limit, graph file
    model.onnx                   the graph with overridable adapter inputs
    tokenizer.json
    state.json                   the installed version (the updater's commit point)
    versions/v0003.onnx_adapter  the installed global adapter; none installed: the export's own
    personalized.onnx_adapter    the global in use plus this device's personal part

By default the runtime serves the personalized file when it belongs to the global in use
(its version is the installed one), else the global adapter; `personalized=False` always
serves the global one (`fedadapt infer --global`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from fedadapt.clients.personalized import (
    GLOBAL_ONNX,
    PERSONALIZED_ONNX,
    STATE_FILE,
    installed_version,
)
from fedadapt.errors import FedAdaptError
from fedadapt.onnx_adapter import (
    RUNTIME_FILE,
    SUFFIX,
    check_fits,
    load_adapter_options,
    open_session,
    read_onnx_adapter,
)

POOLED = "pooled"  # the device graph's second output (`export/graph.py`'s POOLED)

__all__ = [
    "RUNTIME_FILE",
    "STATE_FILE",
    "EdgeRuntime",
    "Prediction",
    "adapter_file",
    "installed_adapter",
]


def adapter_file(folder: Path, version: int) -> Path:
    """Where installed adapter `version` lives in the device folder (it may not exist yet)."""
    return Path(folder) / "versions" / f"v{version:04d}{SUFFIX}"


def installed_adapter(folder: Path) -> Path | None:
    """The adapter file that `state.json` names, if an update has been installed."""
    version = installed_version(Path(folder))
    return None if version is None else adapter_file(folder, version)


@dataclass
class Prediction:
    """One text's answer: the winning label and the softmax score of every label of its task."""

    text: str
    label: str
    scores: dict[str, float]


class EdgeRuntime:
    """One device folder's model, ready to classify: a session, its tokenizer, an active adapter.

    The adapter served is chosen once, here (see the module docstring); `activate` swaps it
    later without recreating the session.

    Parameters
    ----------
    folder : str or Path
        A device folder that `fedadapt export` wrote; without `runtime.json` this raises
        `FedAdaptError`.
    threads : int (default: 0)
        ONNX Runtime's intra-op threads; 0 lets it choose.
    personalized : bool (default: True)
        Serve the personalized adapter when it belongs to the installed global; False always
        serves the global one.
    """

    def __init__(self, folder: str | Path, threads: int = 0, personalized: bool = True) -> None:
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / RUNTIME_FILE).read_text())
        except FileNotFoundError as e:
            raise FedAdaptError(
                f"{self.folder} has no {RUNTIME_FILE}: install an exported model first "
                "(`fedadapt export --adapter DIR --out DEVICE_DIR`)"
            ) from e
        self.session = open_session(self.folder / self.meta["model_file"], threads)
        self.slots = {i.name: tuple(i.shape) for i in self.session.get_overridable_initializers()}
        self.fixed = _fixed_shape(self.session)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        length = self.fixed[1] if self.fixed else None  # a fixed graph wants exactly S tokens
        self.tokenizer.enable_truncation(max_length=length or self.meta["max_length"])
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
        self._adapter: ort.LoraAdapter | None = None
        self._adapter_path: Path | None = None
        self.run_options = ort.RunOptions()
        self.adapter_version: int | None = self.meta.get("adapter_version")
        self.personalized = False
        if personalized and (self.folder / PERSONALIZED_ONNX).exists():
            expected = installed_version(self.folder) or 0
            self.personalized = self.activate(self.folder / PERSONALIZED_ONNX) == expected
        if not self.personalized:
            shared = installed_adapter(self.folder) or self.folder / GLOBAL_ONNX
            if shared.exists():
                self.activate(shared)
            else:  # nothing installed: the graph's own defaults
                self._adapter, self.run_options = None, ort.RunOptions()
                self.adapter_version = self.meta.get("adapter_version")

    @property
    def labels(self) -> list[str]:
        """The graph's labels, from `runtime.json` (task 0's on a graph with several tasks)."""
        return self.meta["labels"]

    def task_labels(self, task: int | None = None) -> list[str]:
        """Task `task`'s labels: the tasks of one graph may have different ones (continual
        learning; their heads are padded to the widest, and the padding never wins)."""
        per_task = self.meta.get("task_labels")
        return per_task[task or 0] if per_task else self.labels

    def activate(self, path: str | Path) -> int:
        """Make the adapter at `path` the active one, on the live session; returns its version."""
        # a stacked device graph's personal branch (the stack's last) may be left out whole
        optional = (self.meta.get("stack") or [])[1:]
        version, _ = check_fits(path, self.meta["base_sha256"], self.slots, optional)
        self._adapter, self.run_options = load_adapter_options(path)
        self._adapter_path = Path(path)
        self.adapter_version = version
        return version

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The served head `(weight [C, d], bias [C])`: the active adapter file's, else the
        graph's defaults. A device personalizing in numpy starts from it and regularizes
        toward it, so it must be the head that produced the logits it is compared with."""
        names = ("head.weight", "head.bias")
        found: dict[str, np.ndarray] = {}
        if self._adapter is not None and self._adapter_path is not None:
            tensors = read_onnx_adapter(self._adapter_path)[2]
            found = {k: tensors[k] for k in names if k in tensors}
        if len(found) < len(names):
            try:  # a device ships no onnx (it serves with onnxruntime): only a fresh graph's
                # default head needs it, and a device that trained or updated has a file
                import onnx
                from onnx import numpy_helper
            except ImportError:
                raise FedAdaptError(
                    f"{self.folder} has no adapter file yet: personalize after the device's "
                    "first round or update"
                ) from None
            graph = onnx.load(str(self.folder / self.meta["model_file"]))
            for init in graph.graph.initializer:
                if init.name in names and init.name not in found:
                    found[init.name] = numpy_helper.to_array(init)
        if len(found) < len(names):
            raise FedAdaptError(f"the graph in {self.folder} has no head.weight/head.bias inputs")
        return tuple(np.asarray(found[k], np.float32) for k in names)  # type: ignore[return-value]

    def logits(self, texts: list[str], task: int | None = None) -> np.ndarray:
        """Raw logits for `texts`, one row each, run with the active adapter.

        A fixed-shape graph gets its exact batch size (the last batch padded with empty texts,
        whose rows are dropped). On a graph with several tasks the rows are as wide as the widest
        head; `predict` cuts them to the task's labels.

        Parameters
        ----------
        texts : list of str
            The inputs; longer ones are truncated to the graph's token limit.
        task : int or None (default: None)
            The task head to run, on a task-indexed graph; None is task 0.

        Returns
        -------
        np.ndarray
            Shape (len(texts), number of logits), in the graph's output type (float16 for
            an fp16 export).
        """
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        return self._run("logits", texts, task)

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        """The pooled embedding the head reads, one row per text, through the active adapter.

        A device without torch personalizes on these (`clients/numpy_personal.py`): the
        logits are `embed(texts) @ head.weight.T + head.bias`. Run in batches of `batch`
        texts (a fixed-shape graph: its own batch), so a large data folder stays in memory.
        Raises `FedAdaptError` on a graph exported before it had this output.
        """
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if POOLED not in outputs:
            raise FedAdaptError(
                f"the graph in {self.folder} predates the pooled-embedding output; install "
                "the device graph again (`fedadapt export` or the next training round)"
            )
        if not texts:
            width = outputs[POOLED][-1]
            return np.zeros((0, width if isinstance(width, int) else 0), np.float32)
        return np.concatenate(
            [self._run(POOLED, texts[i : i + batch]) for i in range(0, len(texts), batch)]
        )

    def _run(self, output: str, texts: list[str], task: int | None = None) -> np.ndarray:
        batch = self.fixed[0] if self.fixed else len(texts)
        out = []
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            enc = self.tokenizer.encode_batch(chunk + [""] * (batch - len(chunk)))
            feed = {
                "input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            }
            if self.meta.get("tasks"):  # a task-indexed graph of stacked adapters
                feed["task_index"] = np.array(task or 0, np.int64)
            out.append(self.session.run([output], feed, self.run_options)[0][: len(chunk)])
        return np.concatenate(out)

    def predict(self, texts: list[str], task: int | None = None) -> list[Prediction]:
        """A `Prediction` per text, in order: softmax over task `task`'s labels only, so the
        padding of a narrower head never wins.
        """
        labels = self.task_labels(task)
        z = self.logits(texts, task)[:, : len(labels)]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return [
            Prediction(
                t,
                labels[int(row.argmax())],
                dict(zip(labels, map(float, row), strict=True)),
            )
            for t, row in zip(texts, p, strict=True)
        ]


def _fixed_shape(session: ort.InferenceSession) -> tuple[int, int] | None:
    shape = session.get_inputs()[0].shape
    return (shape[0], shape[1]) if all(isinstance(d, int) for d in shape) else None
