"""SecAgg+ rounds: the server learns only the weighted mean of the sampled clients' deltas.

Flower 1.42 runs SecAgg+ only through its legacy API: `SecAggPlusWorkflow` over a
`LegacyContext` and a legacy strategy, whose `aggregate_fit` receives the already unmasked
average. One workflow runs per round inside the server's own round loop:

- the modern strategy samples the nodes, exactly as in a plain round;
- a stock legacy `FedAvg` over a client manager holding just those nodes sends them the
  global adapter (the legacy `Parameters` carry no names, so the names ride in the config);
- each client trains, clips its own delta and hands it to `secaggplus_mod`, which quantizes,
  masks and uploads it; Flower's workflow sums, unmasks and dequantizes the weighted mean.

The mean then goes through the modern strategy's own `aggregate_train` as one reply
`global + mean delta` (`server.replies.mean_reply`): FedAvg takes it as it is; FedAdam,
FedYogi and FedAvgM apply their server optimizer to it, as they would to a plain round's
average.

Clipping and the fixed-point range: the server cannot see or clip single deltas, so each
client clips its delta to L2 norm `clip_norm`. No coordinate of a clipped delta exceeds
`clip_norm`, so that is SecAgg+'s `clipping_range` and nothing is cut twice. Without
`clip_norm`, `secagg_clipping_range` cuts each coordinate instead. A client scales its
delta by `num_examples / secagg_max_weight` before quantizing, so each coordinate's error
after unmasking is at most `n · 2·range / quantization_range / Σ(num_examples/max_weight)`
(`quantization_bound`): a range far above the deltas' size, or a max weight far above the
clients' example counts, costs precision.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from fedadapt.deltas import State
from fedadapt.errors import DeltaError
from fedadapt.records import wire_bytes
from fedadapt.server.claims import check_num_examples, check_train_loss
from fedadapt.simconfig import SimConfig

log = logging.getLogger("fedadapt.server")

QUANTIZATION_RANGE = 2**22  # Flower's defaults: with a 2**32 modulus, sums of ≤ 1024 clients
MODULUS_RANGE = 2**32


def clipping_range(cfg: SimConfig) -> float:
    """SecAgg+'s per-coordinate `clipping_range`: `clip_norm` when clients clip their deltas
    (no coordinate of a clipped delta exceeds it), else `secagg_clipping_range`.
    """
    return cfg.clip_norm if cfg.clip_norm > 0 else cfg.secagg_clipping_range


def quantization_bound(cfg: SimConfig, num_examples: list[int]) -> float:
    """Worst-case per-coordinate error of the unmasked mean against the exact one."""
    step = 2 * clipping_range(cfg) / QUANTIZATION_RANGE
    ratio_sum = sum(n / cfg.secagg_max_weight for n in num_examples)
    return len(num_examples) * step / ratio_sum


class MeteredGrid:
    """The grid, counting the serialized bytes of every SecAgg+ message each way."""

    def __init__(self, grid: Any) -> None:
        self._grid, self.sent, self.received = grid, 0, 0

    def send_and_receive(self, messages, timeout=None):
        """The grid's `send_and_receive`, adding each message's wire size to `sent` and each reply's
        (error replies left out) to `received`.
        """
        messages = list(messages)
        self.sent += sum(wire_bytes(m.content) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.received += sum(wire_bytes(m.content) for m in replies if not m.has_error())
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class SecAggRound:
    """The outcome of one SecAgg+ round: the mean delta and what the round cost and claimed.

    Parameters
    ----------
    mean_delta : State or None
        The weighted mean of the clients' deltas; None when the protocol halted (too few
        clients survived) and the global adapter must stay as it was.
    num_examples : list
        The `num-examples` each client in the mean claimed, unchecked: the caller judges them
        (`claims.secagg_rejections`), since one bad weight voids the whole masked sum.
    train_loss : float
        The example-weighted mean train loss of the replies with valid metrics; NaN if none.
    upload_bytes, download_bytes : int
        Wire bytes of every SecAgg+ message from and to the clients, all stages.
    skipped_metrics : Counter (default: empty)
        Replies left out of `train_loss`, by reason.
    """

    mean_delta: State | None  # None: the protocol halted (too few clients survived)
    num_examples: list[int]  # one per client in the mean
    train_loss: float
    upload_bytes: int
    download_bytes: int
    skipped_metrics: Counter = field(default_factory=Counter)  # left out of train_loss

    @property
    def clients(self) -> int:
        """How many clients' deltas are in the mean."""
        return len(self.num_examples)


def round_metrics(results: list[tuple[Any, Any]]) -> tuple[list[Any], float, Counter]:
    """`(every num-examples, their weighted mean train_loss, skipped metrics by reason)`.

    Flower calls this inside its SecAgg+ workflow, where an exception ends the run, so no
    reply's metrics may raise here. A reply whose `train_loss` is missing or not a finite
    number >= 0, or whose `num-examples` is not a positive integer, is left out of the
    loss mean and counted (its delta is already in the masked sum; `num-examples` is judged
    by `claims.secagg_rejections` from the list returned, bad values included).
    """
    counts: list[Any] = []
    skipped: Counter = Counter()
    total = weighted = 0.0
    for n, metrics in results:
        counts.append(n)
        try:
            # Flower's recorddict_to_fitres hands a ConfigRecord, a Mapping but not a dict
            if not isinstance(metrics, Mapping):
                raise DeltaError("metrics are not a mapping", reason="metrics")
            loss = check_train_loss(metrics)
            weight = check_num_examples(n, 0)
        except DeltaError as e:
            skipped[e.reason] += 1
            log.warning("SecAgg+ reply's metrics left out of the loss (%s): %s", e.reason, e)
            continue
        total += weight
        weighted += weight * loss
    return counts, weighted / total if total else float("nan"), skipped


class _UnmaskedFedAvg(LegacyFedAvg):
    """Legacy FedAvg over SecAgg+ results: the workflow hands every result the one unmasked
    mean, so re-weighting it by the claimed `num-examples` is the identity at best, and a
    division by zero inside the workflow when the claims sum to 0 (hostile or empty)."""

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        if not results:
            return None, {}
        metrics = self.fit_metrics_aggregation_fn or (lambda _: {})
        return results[0][1].parameters, metrics([(r.num_examples, r.metrics) for _, r in results])


def legacy_strategy(names: list[str], clients: int, seen: dict[str, Any]) -> LegacyFedAvg:
    """The legacy FedAvg that SecAgg+ drives; its metrics land in `seen`."""

    def fit_metrics(results: list[tuple[int, dict]]) -> dict:
        seen["num_examples"], seen["train_loss"], seen["skipped"] = round_metrics(results)
        return {}

    return _UnmaskedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        on_fit_config_fn=lambda r: {"server-round": r, "names": "\n".join(names)},
        fit_metrics_aggregation_fn=fit_metrics,
    )


def run_round(
    grid: Any,
    context: Context,
    node_ids: list[int],
    global_state: State,
    trainable: list[str],
    server_round: int,
    cfg: SimConfig,
) -> SecAggRound:
    """One SecAgg+ round over `node_ids`: the weighted mean of their deltas of `trainable`."""
    metered = MeteredGrid(grid)
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(node_id=nid, grid=metered, run_id=grid.run.run_id))
    seen: dict[str, Any] = {}
    names = sorted(global_state)
    legacy = legacy_strategy(names, len(node_ids), seen)
    ctx = LegacyContext(
        Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=RecordDict(),
            run_config=context.run_config,
        ),
        config=ServerConfig(num_rounds=cfg.rounds),
        strategy=legacy,
        client_manager=manager,
    )
    sent = ndarrays_to_parameters([global_state[k].numpy() for k in names])
    ctx.state[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(sent, keep_input=True)
    ctx.state[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    SecAggPlusWorkflow(
        num_shares=cfg.secagg_num_shares,
        reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=cfg.secagg_max_weight,
        clipping_range=clipping_range(cfg),
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=cfg.round_timeout,
    )(metered, ctx)
    mean = None
    if "num_examples" in seen:
        params = compat.arrayrecord_to_parameters(ctx.state[MAIN_PARAMS_RECORD], keep_input=True)
        arrays = parameters_to_ndarrays(params)
        mean = {
            k: torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(global_state[k].shape)
            for k, a in zip(trainable, arrays, strict=True)
        }
    else:
        log.warning("round %d: SecAgg+ halted; the global adapter stays as it was", server_round)
    examples = seen.get("num_examples", [])
    return SecAggRound(
        mean_delta=mean,
        num_examples=examples,
        train_loss=seen.get("train_loss", float("nan")),
        upload_bytes=metered.received,
        download_bytes=metered.sent,
        skipped_metrics=seen.get("skipped", Counter()),
    )
