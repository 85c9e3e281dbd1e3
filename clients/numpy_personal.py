"""A device personalizes without torch: numpy over the embeddings its ONNX graph gives.

A device of the torch-free tier runs ONNX Runtime only, so it cannot train its adapters;
but the head is linear on the pooled embedding, and the device graph outputs that
embedding (`EdgeRuntime.embed`). `personalize` embeds the device's own examples through
the global adapter in use and fits, in numpy (`fedadapt/knn_per.py`):

- `head-bias`: one offset per class on the global logits;
- `personal-head`: the global head moved by a few gradient steps toward the device's data;
- `knn-per`: a memory of the training embeddings mixed with the global model's softmax.

Which one `fedadapt infer` serves is chosen on a seeded validation slice of the TRAIN rows
(each candidate fitted on the rest), never on the held-out rows, whose accuracies are then
reported for all of them, refitted on every train row. `global` is served where nothing
beats it there.

The files are the user's: the memory holds embeddings of their texts, from which much of a
text can be guessed, so both are written 0600 and never leave the device (no text is stored).
They belong to the global adapter they were fitted over; once another is installed they
are stale and `infer` serves as if they were absent until `personalize` runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from fedadapt.atomic import PRIVATE, atomic_write_bytes, atomic_write_text
from fedadapt.clients.runtime import EdgeRuntime, Prediction
from fedadapt.data import local_files
from fedadapt.errors import FedAdaptError
from fedadapt.knn_per import (
    TEMPERATURE,
    KnnMemory,
    accuracy,
    choose,
    fit_bias,
    fit_personal_head,
    interpolate,
    softmax,
    validation_rows,
)

TENSORS_FILE = "numpy-personal.safetensors"
RECORD_FILE = "numpy-personal.json"
MODES = ("global", "head-bias", "personal-head", "knn-per")  # ties go to the earlier one


@dataclass
class NumpyPersonalization:
    """What a device fitted in numpy, and which of it it serves (`mode`)."""

    mode: str
    global_weight: np.ndarray
    global_bias: np.ndarray
    bias: np.ndarray  # head-bias offsets
    head_weight: np.ndarray  # the personal head
    head_bias: np.ndarray
    memory: KnnMemory
    k: int
    lam: float

    def proba(self, emb: np.ndarray, mode: str | None = None) -> np.ndarray:
        """Class probabilities of `mode` (default: the served one) for embeddings `emb`."""
        mode = mode or self.mode
        logits = emb @ self.global_weight.T + self.global_bias
        if mode == "head-bias":
            return softmax(logits + self.bias)
        if mode == "personal-head":
            return softmax(emb @ self.head_weight.T + self.head_bias)
        if mode == "knn-per":
            return interpolate(self.memory.predict_proba(emb, self.k), logits, self.lam)
        return softmax(logits)


def fit(
    emb: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, seed: int = 0
) -> tuple[NumpyPersonalization, dict[str, float]]:
    """Every candidate fitted on all of (emb, y), the served one chosen on a validation
    slice of these rows (each candidate refitted without it); returns also the slice's
    accuracies, by mode."""
    y = np.asarray(y, np.int64)
    classes = len(bias)
    logits = emb @ weight.T + bias
    choice = choose(emb, y, logits, classes, seed=seed)
    val = validation_rows(len(y), seed=seed)
    scores: dict[str, float] = {}
    if val.any():
        rest = ~val
        hw, hb = fit_personal_head(emb[rest], y[rest], weight, bias)
        scores = {
            "global": accuracy(logits[val], y[val]),
            "head-bias": accuracy(logits[val] + fit_bias(logits[rest], y[rest]), y[val]),
            "personal-head": accuracy(emb[val] @ hw.T + hb, y[val]),
            "knn-per": choice.validation_accuracy,
        }
    best = max(MODES, key=lambda m: (scores.get(m, 0.0), -MODES.index(m)))
    hw, hb = fit_personal_head(emb, y, weight, bias)
    fitted = NumpyPersonalization(
        mode=best if scores else "global",
        global_weight=weight,
        global_bias=bias,
        bias=fit_bias(logits, y),
        head_weight=hw,
        head_bias=hb,
        memory=KnnMemory.build(emb, y, classes, TEMPERATURE),
        k=choice.k,
        lam=choice.lam,
    )
    return fitted, scores


def personalize(
    device_dir: str | Path, data_dir: str | Path | None = None, threads: int = 0
) -> dict:
    """Fit the numpy personalization of the device at `device_dir` on its own data folder
    (default: `device_dir/data`), with the split the device trains with, and keep it there;
    returns the record written (held-out accuracies by mode, the served mode, k, lam)."""
    device_dir = Path(device_dir)
    data = Path(data_dir) if data_dir is not None else device_dir / "data"
    if not data.is_dir():
        raise FedAdaptError(
            f"{data} is not a folder: a device personalizes on its own labelled examples "
            "(.csv or .jsonl files of text,label), in DEVICE_DIR/data or --data-dir"
        )
    rt = EdgeRuntime(device_dir, threads, personalized=False)
    fraction, key = local_files.recorded_split(device_dir)
    d = local_files.load(data, rt.labels, fraction, key, min_examples=2).data
    weight, bias = rt.head()
    train_emb = rt.embed(d.train_texts).astype(np.float64)
    test_emb = rt.embed(d.test_texts).astype(np.float64)
    fitted, validation = fit(train_emb, np.array(d.train_labels), weight, bias)
    test_y = np.array(d.test_labels, np.int64)
    held_out = {m: accuracy(fitted.proba(test_emb, m), test_y) for m in MODES}
    record = {
        "mode": fitted.mode,
        "k": fitted.k,
        "lambda": fitted.lam,
        "temperature": fitted.memory.temperature,
        "adapter_version": rt.adapter_version,
        "base_sha256": rt.meta["base_sha256"],
        "examples": {"train": len(d.train_labels), "held_out": len(d.test_labels)},
        "validation_accuracy": validation,
        "held_out_accuracy": held_out,
    }
    tensors = {
        "global.weight": weight,
        "global.bias": bias,
        "head_bias": fitted.bias,
        "personal_head.weight": fitted.head_weight,
        "personal_head.bias": fitted.head_bias,
        "memory.keys": fitted.memory.keys.astype(np.float32),
        "memory.labels": fitted.memory.labels,
    }
    blob = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    atomic_write_bytes(device_dir / TENSORS_FILE, blob, PRIVATE)
    atomic_write_text(device_dir / RECORD_FILE, json.dumps(record, indent=2) + "\n", PRIVATE)
    return record


def load(device_dir: str | Path, rt: EdgeRuntime) -> NumpyPersonalization | None:
    """The device's numpy personalization if it was fitted over the global adapter `rt`
    serves (else None: it is stale, or was never fitted)."""
    device_dir = Path(device_dir)
    if not (device_dir / RECORD_FILE).exists():
        return None
    try:
        record = json.loads((device_dir / RECORD_FILE).read_text())
        t = safetensors.numpy.load_file(str(device_dir / TENSORS_FILE))
        if (record["adapter_version"], record["base_sha256"]) != (
            rt.adapter_version,
            rt.meta["base_sha256"],
        ):
            return None
        classes = len(t["global.bias"])
        keys, labels = t["memory.keys"], t["memory.labels"]
        return NumpyPersonalization(
            mode=record["mode"] if record["mode"] in MODES else "global",
            global_weight=t["global.weight"].astype(np.float64),
            global_bias=t["global.bias"].astype(np.float64),
            bias=t["head_bias"].astype(np.float64),
            head_weight=t["personal_head.weight"].astype(np.float64),
            head_bias=t["personal_head.bias"].astype(np.float64),
            memory=KnnMemory(keys.astype(np.float64), labels, classes, record["temperature"]),
            k=int(record["k"]),
            lam=float(record["lambda"]),
        )
    except Exception as e:  # torn JSON, a foreign safetensors file, a missing tensor
        raise FedAdaptError(
            f"cannot read the numpy personalization in {device_dir} ({type(e).__name__}); "
            f"run `fedadapt device personalize --device-dir {device_dir}` again"
        ) from None


def predict(rt: EdgeRuntime, fitted: NumpyPersonalization, texts: list[str]) -> list[Prediction]:
    """`rt.predict`'s answers, from the numpy personalization's served mode."""
    p = fitted.proba(rt.embed(texts).astype(np.float64))
    return [
        Prediction(
            t, rt.labels[int(row.argmax())], dict(zip(rt.labels, map(float, row), strict=True))
        )
        for t, row in zip(texts, p, strict=True)
    ]
