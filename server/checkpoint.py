"""Per-round checkpoints, written atomically, so a killed run resumes losing at most a round.

One safetensors file per round holds the global adapter and the server optimizer's state
(FedAdam/FedYogi moments, FedAvgM momentum) with the round's report rows in its metadata;
`latest` names the newest complete file and is replaced last. Under accounted central DP the
metadata also holds the privacy accountant's ledger, so a resumed run's epsilon continues from
where the killed one stopped instead of restarting from zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.deltas import State
from fedadapt.errors import FedAdaptError

KEEP = 2
_DICT_STATE = ("m_t", "v_t")  # FedOpt family: dict[name, ndarray]
_LIST_STATE = ("momentum_vector",)  # FedAvgM: list of ndarrays in arrays order


def _inner(strategy: Any) -> Any:
    return getattr(strategy, "strategy", strategy)  # unwrap the DP wrapper


def strategy_state(strategy: Any) -> dict[str, torch.Tensor]:
    """The server optimizer's state as named tensors (`m_t/NAME`, `v_t/NAME`,
    `momentum_vector/00000`...), unwrapping a DP wrapper; empty for plain FedAvg and before the
    first round.
    """
    s, out = _inner(strategy), {}
    for attr in _DICT_STATE:
        for k, v in (getattr(s, attr, None) or {}).items():
            out[f"{attr}/{k}"] = torch.from_numpy(np.asarray(v).copy())
    for attr in _LIST_STATE:
        for i, v in enumerate(getattr(s, attr, None) or []):
            out[f"{attr}/{i:05d}"] = torch.from_numpy(np.asarray(v).copy())
    return out


class Checkpoint(NamedTuple):
    """What `read_latest` gives back: a finished round's global adapter, the optimizer's tensors
    for `restore_strategy_state`, the progress (report rows...), and the DP ledger, if any.
    """

    round: int
    global_state: State
    strategy_tensors: dict[str, torch.Tensor]
    progress: dict[str, Any]
    accountant: dict[str, Any] | None  # the DP accountant's `state_dict()`, if it had one


def restore_strategy_state(
    strategy: Any, tensors: dict[str, torch.Tensor], accountant: dict[str, Any] | None = None
) -> None:
    """The saved optimizer state and DP ledger back into a freshly built strategy."""
    _restore_accountant(strategy, accountant)
    s = _inner(strategy)
    for attr in _DICT_STATE:
        part = {
            k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith(f"{attr}/")
        }
        if part:
            setattr(s, attr, part)
    for attr in _LIST_STATE:
        part = sorted((k, v.numpy()) for k, v in tensors.items() if k.startswith(f"{attr}/"))
        if part:
            setattr(s, attr, [v for _, v in part])


def _restore_accountant(strategy: Any, saved: dict[str, Any] | None) -> None:
    accountant = getattr(strategy, "accountant", None)
    if accountant is None:
        return
    if saved is None:
        raise FedAdaptError(
            "the checkpoint holds no DP accountant state (it predates it, or its run had no "
            "accounted DP): resuming would restart epsilon from zero; start a fresh run instead"
        )
    try:
        accountant.load_state_dict(saved)
    except (ValueError, TypeError, KeyError) as e:
        raise FedAdaptError(f"the checkpoint's DP accountant does not fit this run: {e}") from e


def write(
    folder: Path, server_round: int, global_state: State, strategy: Any, progress: dict[str, Any]
) -> Path:
    """Checkpoint round `server_round`: write its file, then point `latest` at it, then keep only
    the newest `KEEP` files. A crash at any point leaves `latest` naming a complete file.

    Parameters
    ----------
    folder : Path
        The checkpoint folder (created if missing).
    server_round : int
        The round just finished.
    global_state : State
        The global state after that round.
    strategy : Strategy
        The strategy whose optimizer state and DP accountant are saved.
    progress : dict
        JSON-able progress (the report rows so far), given back on resume.

    Returns
    -------
    Path
        The file written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"global/{k}": v.contiguous() for k, v in global_state.items()}
    tensors.update({f"strategy/{k}": v for k, v in strategy_state(strategy).items()})
    meta = {"round": str(server_round), "progress": json.dumps(progress)}
    if (accountant := getattr(strategy, "accountant", None)) is not None:
        meta["dp-accountant"] = json.dumps(accountant.state_dict())
    blob = save(tensors, metadata=meta)
    path = folder / f"round-{server_round:04d}.safetensors"
    atomic_write_bytes(path, blob)
    atomic_write_text(folder / "latest", path.name + "\n")
    for old in sorted(folder.glob("round-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def read_latest(folder: Path) -> Checkpoint | None:
    """The newest checkpoint, or None; an unreadable one is a `FedAdaptError` naming it."""
    pointer = folder / "latest"
    if not pointer.exists():
        return None
    path = folder / "?"
    try:
        path = folder / pointer.read_text().strip()
        blob = path.read_bytes()
        n = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + n])["__metadata__"]
        tensors = load(blob)
        accountant = json.loads(meta["dp-accountant"]) if "dp-accountant" in meta else None
        done, progress = int(meta["round"]), json.loads(meta["progress"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise FedAdaptError(
            f"checkpoint {path} is unreadable ({e}); delete {folder} to start the run over"
        ) from e
    global_state = {k[7:]: v for k, v in tensors.items() if k.startswith("global/")}
    strat = {k[9:]: v for k, v in tensors.items() if k.startswith("strategy/")}
    return Checkpoint(done, global_state, strat, progress, accountant)
