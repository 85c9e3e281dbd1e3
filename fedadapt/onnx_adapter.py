"""`.onnx_adapter` files and ORT sessions: ONNX Runtime's adapter format, plus the checks ORT
leaves out.

It lives in the core because both sides need it: the exporter writes and measures adapter
files, and the device runtime reads and activates them; neither imports the other.

ORT stores an adapter version and a model version but never compares them with anything.
Here the model version is the first 28 bits of the base model's SHA-256 (the format holds a
31-bit integer), and `check_fits` compares it, and every tensor's name and shape, with the
exported graph before a session may use the adapter; it also refuses a file that leaves out
some of the graph's adapter inputs, for which ORT would silently run the export's defaults.
This module needs only numpy and onnxruntime, so it runs on devices without torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedadapt.atomic import mode_for
from fedadapt.errors import AdapterLoadError, FedAdaptError

SUFFIX = ".onnx_adapter"
RUNTIME_FILE = "runtime.json"  # an exported graph's sidecar: base, labels, token limit, layout
CPU = ("CPUExecutionProvider",)
# ORT's provider lists by the names the CLI takes. CUDA lists the CPU last: ORT places there
# the nodes that have no CUDA kernel (see `fedadapt.bench.export.placement`).
PROVIDERS = {"cpu": CPU, "cuda": ("CUDAExecutionProvider", *CPU)}


def model_version(base_sha256: str) -> int:
    """The model version an adapter file carries: the first 28 bits of the base's SHA-256.

    28 bits fit the format's 31-bit integer; `check_fits` refuses a file whose version is not
    the exported graph's base.
    """
    return int(base_sha256[:7], 16)


def _wire_dtype(v: np.ndarray) -> type:
    return np.float16 if np.asarray(v).dtype == np.float16 else np.float32


def write_onnx_adapter(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    version: int,
    base_sha256: str,
    mode: int | None = None,
) -> Path:
    """Write atomically (temp file, fsync, rename): a reader never sees half a file. fp16
    tensors (an fp16 graph's inputs) stay fp16; anything else is written as fp32. `mode` as
    in `fedadapt.atomic.atomic_write_bytes` (`PRIVATE` for a device's personalized file)."""
    path = Path(path)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(int(version))
    fmt.set_model_version(model_version(base_sha256))
    fmt.set_parameters(
        {
            k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, dtype=_wire_dtype(v)))
            for k, v in tensors.items()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    os.close(fd)
    try:
        fmt.export_adapter(tmp)
        os.chmod(tmp, mode_for(path, mode))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_onnx_adapter(path: str | Path) -> tuple[int, int, dict[str, np.ndarray]]:
    """(adapter version, model version, tensors); a damaged file is an AdapterLoadError."""
    try:
        fmt = ort.AdapterFormat.read_adapter(str(path))
    except Exception as e:  # ORT raises bare RuntimeErrors/Fails for malformed flatbuffers
        raise AdapterLoadError(f"{path} is not a readable .onnx_adapter file: {e}") from e
    # copies: `numpy()` views memory that `fmt` owns and frees, so a later read reused it
    tensors = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
    return fmt.get_adapter_version(), fmt.get_model_version(), tensors


def adapter_of(name: str) -> str:
    """The adapter a graph input belongs to: `<adapter>:<name>` in a graph of several
    adapters (`shared:`/`personal:` in a device graph, `fusion:`), "" for the unprefixed
    names (a single adapter's tensors, and the head every graph has)."""
    return name.split(":", 1)[0] if ":" in name else ""


def missing_slots(
    tensors: Collection[str], slots: Collection[str], optional: Collection[str] = ()
) -> list[str]:
    """The slots a file should fill but does not: every slot, except those of an `optional`
    adapter the file leaves out entirely (a stacked device graph's personal branch, whose
    defaults are the identity); part of an adapter is never enough."""
    given = {adapter_of(k) for k in tensors}
    return sorted(
        k
        for k in slots
        if k not in tensors and not (adapter_of(k) in optional and adapter_of(k) not in given)
    )


def check_fits(
    path: str | Path,
    base_sha256: str,
    slots: dict[str, tuple[int, ...]],
    optional: Collection[str] = (),
) -> tuple[int, dict[str, np.ndarray]]:
    """Check an adapter file against a graph's base and overridable inputs; returns
    (version, tensors). ORT would accept a wrong base silently, run the export's defaults
    for a missing tensor silently, and refuse a wrong name or shape only at run time.

    `optional` names the adapters (input prefixes, see `adapter_of`) a file may leave out
    as a whole: their defaults are meant to run.
    """
    version, mv, tensors = read_onnx_adapter(path)
    if mv != model_version(base_sha256):
        raise AdapterLoadError(
            f"{path} was made for another base model (model version {mv}, this base is "
            f"{model_version(base_sha256)}, from SHA-256 {base_sha256[:12]}…)"
        )
    unknown = sorted(set(tensors) - set(slots))
    if unknown:
        raise AdapterLoadError(
            f"{path} has tensors this graph cannot take: {unknown[:5]} "
            "(exported with --merge-lora, or for another adapter layout?)"
        )
    bad = [
        f"{k}: graph {slots[k]}, file {tuple(v.shape)}"
        for k, v in tensors.items()
        if tuple(v.shape) != tuple(slots[k])
    ]
    if bad:
        raise AdapterLoadError(f"{path} has mis-shaped tensors: {bad[:5]}")
    missing = missing_slots(tensors, slots, optional)
    if missing:
        raise AdapterLoadError(
            f"{path} lacks {len(missing)} of the graph's {len(slots)} adapter tensors: "
            f"{missing[:5]}{' …' if len(missing) > 5 else ''} (ORT would silently run the "
            "export's defaults for them; a partial file, or one for another adapter layout?)"
        )
    return version, tensors


def execution_providers(name: str) -> tuple[str, ...]:
    """ORT's provider list for `name` (a key of PROVIDERS), checked against this onnxruntime
    build up front: ORT itself only warns about a missing provider and runs on the CPU, so a
    GPU measurement would silently be a CPU one."""
    if name not in PROVIDERS:
        raise FedAdaptError(f"unknown execution provider {name!r}; have {sorted(PROVIDERS)}")
    have = ort.get_available_providers()
    missing = [p for p in PROVIDERS[name] if p not in have]
    if missing:
        v = ort.__version__
        raise FedAdaptError(
            f"the {name} execution provider needs {missing[0]}, which this onnxruntime {v} "
            f"lacks (it has {', '.join(have)}): replace it with onnxruntime-gpu, version {v} "
            "or the newest PyPI has below it (pip uninstall -y onnxruntime && "
            "pip install onnxruntime-gpu==VERSION)"
        )
    return PROVIDERS[name]


def open_session(
    path: str | Path, threads: int = 0, providers: Sequence[str] = CPU
) -> ort.InferenceSession:
    """A session (on the CPU unless `providers` says otherwise, see `execution_providers`)
    that stays quiet about overridable initializers (one warning per tensor)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=list(providers))
    if providers[0] not in sess.get_providers():  # ORT logs the failure and goes on without
        raise FedAdaptError(
            f"ONNX Runtime could not start {providers[0]} for {path} and would run it on "
            f"{sess.get_providers()[0]} (for CUDA: are the CUDA and cuDNN libraries that "
            "this onnxruntime-gpu build needs installed? its log above says which)"
        )
    return sess


def load_adapter_options(path: str | Path) -> tuple[ort.LoraAdapter, ort.RunOptions]:
    """Run options that make the `.onnx_adapter` at `path` active. Keep the adapter
    referenced as long as the options are used: ORT does not, and silently falls back to
    the graph's defaults once it is collected."""
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    return adapter, options
