"""torch → ONNX with every adapter tensor kept as an overridable initializer.

The exporters rename `nn.Linear` weights and the dynamo optimizer merges equal initializers
across layers (zero-initialised biases, say), so adapter tensors are never exported as
parameters. They enter the graph as named *inputs* (`torch.func.functional_call` feeds them to
the unchanged modules), and afterwards each input gets a same-named default initializer. ONNX
Runtime treats such a pair as an overridable initializer: the adapter baked in at export runs
by default, and `RunOptions.add_active_adapter` (or a plain feed) replaces it on a live session.

A stacked export takes K adapters of one shape, each tensor as `[K, ...]`, plus a `task_index`
input that picks one per run: one graph serves K tasks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.func import functional_call

from fedadapt.adapters.composition import Fuse
from fedadapt.adapters.fusion import fusion_key
from fedadapt.adapters.model import HEAD_PREFIX, AdapterModel
from fedadapt.atomic import atomic_write_bytes

DATA_INPUTS = ("input_ids", "attention_mask")
TASK_INPUT = "task_index"
OUTPUT = "logits"
POOLED = "pooled"  # the head's input: a device without torch personalizes on it


class _AdapterInputs(nn.Module):
    """Runs `model` with its adapter tensors taken from the `adapters` argument."""

    def __init__(self, model: nn.Module, paths: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        self.paths = paths  # logical tensor name -> parameter path in `model`

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        adapters: dict[str, torch.Tensor],
        task_index: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        params = {
            self.paths[k]: v if task_index is None else v[task_index] for k, v in adapters.items()
        }
        return functional_call(self.model, params, (input_ids, attention_mask), strict=False)


class _WithPooled(nn.Module):
    """`model`'s logits and the pooled embedding its active head reads, as two outputs.

    A device without torch fits a personal head and a kNN memory in numpy; it can do so only
    on the head's input, which the logits alone do not give back.
    """

    def __init__(self, model: AdapterModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.embed(input_ids, attention_mask)
        return self.model.heads[self.model.active_head](pooled), pooled


def active_parameters(model: AdapterModel) -> dict[str, nn.Parameter]:
    """Every tensor the active setup reads, by its graph input name.

    One adapter keeps its adapter-file names, so its `.onnx_adapter` is its file's tensors.
    Several adapters are told apart as `<adapter>:<name>`, a fusion's tensors as
    `fusion:<name>`; the active head is always `head.weight` / `head.bias`.
    """
    block = model.control.active
    names = block.names if block else ()

    def body(tensors: dict[str, nn.Parameter], prefix: str) -> dict[str, nn.Parameter]:
        return {prefix + k: p for k, p in tensors.items() if not k.startswith(HEAD_PREFIX)}

    out: dict[str, nn.Parameter] = {}
    for n in names:
        out.update(body(model.adapter_parameters(n), "" if len(names) == 1 else f"{n}:"))
    if isinstance(block, Fuse):
        out.update(body(model.fusion_parameters(fusion_key(names)), "fusion:"))
    if model.active_head is not None:
        for k, p in model.heads[model.active_head].named_parameters():
            out[HEAD_PREFIX + k] = p
    return out


def export_graph(
    model: AdapterModel,
    path: Path,
    fixed_shape: tuple[int, int] | None = None,
    metadata: dict[str, str] | None = None,
    stacked: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    pooled: bool = False,
) -> dict[str, np.ndarray]:
    """Export the active setup of `model` to `path`; returns the inputs' default values.

    `dtype` is the adapter inputs' type: float16 for a graph of a `model.half()` (its
    adapter tensors then stay fp16 overridable inputs, and so do their `.onnx_adapter`s).

    With `stacked` (each active tensor's name -> K values stacked on dim 0), the graph takes
    a `task_index` input and runs the adapter at that index: K tasks, one graph.

    With `pooled`, the graph has a second output `pooled` after `logits`: the embedding the
    head reads, so a device can fit heads over it without torch. The inputs are unchanged.
    """
    model.eval()
    for n in model.control.active.names if model.control.active else ():
        model.fold(n)  # prefix tuning's MLP is training-only: the graph takes its keys/values
    params = active_parameters(model)
    where = {id(p): name for name, p in model.named_parameters()}
    paths = {k: where[id(p)] for k, p in params.items()}
    if pooled and model.active_head is None:
        raise ValueError("a pooled output needs an active head")
    module: nn.Module = _WithPooled(model) if pooled else model
    if pooled:
        paths = {k: f"model.{v}" for k, v in paths.items()}
    if stacked is not None and set(stacked) != set(params):
        raise ValueError("stacked tensors must match the active setup's tensors")
    adapters = stacked if stacked is not None else {k: p.detach() for k, p in params.items()}
    batch, seq = fixed_shape or (2, 16)
    ids = torch.full((batch, seq), 1000, dtype=torch.long)
    kwargs: dict = {"adapters": {k: v.detach().to(dtype).contiguous() for k, v in adapters.items()}}
    names = [*DATA_INPUTS, *adapters]
    if stacked is not None:
        kwargs[TASK_INPUT] = torch.tensor(0, dtype=torch.long)
        names.append(TASK_INPUT)
    dynamic = None
    if fixed_shape is None:
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
        # A dict, not a tuple: torch turns tuples in dynamic_shapes into lists and then
        # rejects them against the tuple of inputs.
        dynamic = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}
        dynamic["adapters"] = {k: None for k in adapters}
        if stacked is not None:
            dynamic[TASK_INPUT] = None
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            _AdapterInputs(module, paths),
            (ids, torch.ones_like(ids)),
            kwargs=kwargs,
            dynamo=True,
            input_names=names,
            output_names=[OUTPUT, POOLED] if pooled else [OUTPUT],
            dynamic_shapes=dynamic,
        )
    proto = program.model_proto
    got = [i.name for i in proto.graph.input]
    if got != names:
        raise RuntimeError(f"exporter changed the graph inputs: expected {names}, got {got}")
    defaults = {k: v.numpy() for k, v in kwargs["adapters"].items()}
    add_defaults(proto, defaults)
    for k, v in (metadata or {}).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    save_model(proto, path)
    return defaults


def add_defaults(proto: onnx.ModelProto, defaults: dict[str, np.ndarray]) -> None:
    """Give each adapter input a same-named initializer: an overridable default."""
    have = {i.name for i in proto.graph.initializer}
    for k, v in defaults.items():
        if k in have:
            raise ValueError(f"{k} is already an initializer")
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v), k))


def overridable(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the initializers that are also graph inputs."""
    inputs = {i.name for i in proto.graph.input}
    return {i.name: tuple(i.dims) for i in proto.graph.initializer if i.name in inputs}


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, written atomically.

    `onnx.save` appends to an existing external-data file, so re-exporting into the same
    folder would grow and corrupt it; serialising in memory avoids external data entirely.
    """
    atomic_write_bytes(Path(path), proto.SerializeToString())


@contextlib.contextmanager
def quiet_logger(name: str | None = None) -> Iterator[None]:
    """Logger `name` (default: the root) at ERROR for the block, then as it was.

    Importing `onnxruntime.quantization` (and its tools) sets the root logger to INFO, which
    floods a user's logs; the torch exporter logs a torchvision notice per call.
    """
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress, deprecation warnings and a torchvision notice per call."""
    with quiet_logger("torch.onnx"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield
