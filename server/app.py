"""The Flower `ServerApp`: federated adapter training over deltas, then the baselines.

The round loop is written out here (instead of `Strategy.start`) because the server must
screen delta replies before the strategy sees them, checkpoint every round, resume, and
evaluate every client for the report; all aggregation math is the strategy's own.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedadapt.adapter_files import save_adapter
from fedadapt.adapters import AdapterModel
from fedadapt.atomic import atomic_write_text
from fedadapt.base.checkpoint import base_sha256
from fedadapt.deltas import State
from fedadapt.errors import FedAdaptError
from fedadapt.hetlora import client_rank, global_config
from fedadapt.model_setup import (
    GLOBAL,
    build_fresh_global,
    build_model,
    full_model_state,
    label_names,
    mix_seed,
    trainable_global_keys,
)
from fedadapt.ray_nodes import peak_rss_mb, workers_of
from fedadapt.records import record_to_state, state_to_record, wire_bytes
from fedadapt.server import checkpoint, full_model_reuse, report, secagg
from fedadapt.server.claims import secagg_rejections
from fedadapt.server.combine import ROBUST_RULES
from fedadapt.server.evaluation import evaluate_all, round_sample
from fedadapt.server.hetlora_round import screen_tiers, slice_messages
from fedadapt.server.nodes import PartitionOrderedGrid, ask_partitions
from fedadapt.server.polling import QuickPollGrid
from fedadapt.server.replies import mean_reply, screen, screen_full
from fedadapt.server.strategy import build_strategy, dp_epsilon
from fedadapt.server.timing import RoundClock
from fedadapt.server.updates.publish import publish
from fedadapt.simconfig import LINEAR_STRATEGIES, SimConfig, parse_tiers
from fedadapt.updates.keys import load_private

log = logging.getLogger("fedadapt.server")
app = ServerApp()


class FlowerLines(logging.Filter):
    """Flower's own log lines, as a fedadapt user should read them; a filter on Flower's
    logger, so Flower itself is not patched.

    - Flower logs whatever the ServerApp raises with its traceback (`exc_info`). For a fedadapt
      error (a bad run-config key or value through `flwr run --run-config`, a key that cannot
      sign) the user gets fedadapt's one line instead, naming the key; the run's status still
      says why it failed (Flower puts the message in its details).
    - Two lines of the strategy contradict what fedadapt does, and are dropped: "Federated
      evaluation will be skipped" (fedadapt asks every client itself, `server.evaluation`, so
      the strategy's own evaluation is off) and "aggregate_train: Received 1 results" (the
      round's screened replies reach the strategy folded into one, `server.combine`). The
      round's own line says how many clients replied and which were rejected.
    """

    DROPPED = (
        "fraction_evaluate is set to 0.0",
        "%s: Received %s results and %s failures",
        "aggregate_train: Received %s results and %s failures",  # the DP wrappers' own
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a record carrying a fedadapt error as its one line; drop the two
        contradicting lines; keep every other record."""
        if isinstance(record.msg, str) and record.msg.startswith(self.DROPPED):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FedAdaptError):
            record.msg, record.args = "fedadapt: error: %s", (" ".join(str(error).split()),)
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("flwr").addFilter(FlowerLines())


def _robust_rule(cfg: SimConfig) -> tuple[str, float] | None:
    """Trimmed mean or median, combined over the stacked deltas as they are screened
    (`server.combine`); central DP instead clips and accounts for each reply itself."""
    rule = cfg.aggregation
    if rule not in ROBUST_RULES or cfg.dp_noise_multiplier > 0:
        return None
    return rule, cfg.trim_fraction if rule == "trimmed-mean" else 0.0


def _not_finite(arrays) -> str | None:
    """The first tensor of an aggregate that holds a NaN or Inf, or None when all are finite:
    checked before the aggregate becomes the global, which every later round builds on."""
    for name in arrays:
        if not np.isfinite(arrays[name].numpy()).all():
            return name
    return None


def _linear_weight_key(strategy, cfg: SimConfig) -> str | None:
    """The weight key, where the strategy's aggregate is a weighted mean of the replies.

    Then replies are folded into their mean as they are screened (`server.replies`). Trimmed
    mean and median need every reply, and central DP clips and accounts for each one.
    """
    linear = cfg.aggregation in LINEAR_STRATEGIES
    return strategy.weighted_by_key if linear and cfg.dp_noise_multiplier == 0 else None


def _round_row(
    server_round: int, clients: int, upload: int, download: int, loss: float, rejected: dict
) -> dict[str, Any]:
    """A round's report row; accuracies are filled in when the round is evaluated."""
    return {
        "round": server_round,
        "clients": clients,
        "upload_bytes": upload,
        "download_bytes": download,
        "train_loss": loss,
        "global_accuracy": None,
        "personalized_accuracy": None,
        "rejected": rejected,
    }


class FederatedRun:
    """One run of the ServerApp: the adapter rounds, the final evaluation, the baselines, the
    report, all under `cfg.out`.

    Building one already talks to the nodes: it waits for `num_clients` of them and asks each
    for its partition, so that clients are sampled, and their replies folded, in partition
    order whatever their node ids. Too few nodes connected or answering in time raise
    `FedAdaptError`.
    """

    def __init__(self, cfg: SimConfig, grid: Grid, context: Context) -> None:
        self.cfg, self.out, self.context = cfg, Path(cfg.out), context
        grid = QuickPollGrid(grid, cfg.grid_poll_s)
        self.partition_of = ask_partitions(grid, cfg)
        order = sorted(self.partition_of, key=self.partition_of.get)
        self.grid = PartitionOrderedGrid(grid, order)
        self.base_sha = base_sha256()
        self.final_eval: dict[int, dict[str, float]] | None = None  # the last round's, per client
        # loaded now: a key that cannot sign must stop the run before a round trains
        self.publish_key = load_private(cfg.publish_key) if cfg.publish_every else None

    def _progress(self, label: str, row: dict[str, Any]) -> None:
        acc = ""
        if row.get("global_accuracy") is not None:
            g, p = row["global_accuracy"], row["personalized_accuracy"]
            acc = f" | acc global {g:.3f} personal {p:.3f}"
        rej = row.get("rejected") or {}
        print(
            f"[{label}] round {row['round']}/{self.cfg.rounds} | clients {row['clients']}"
            f"{f' (rejected {rej})' if rej else ''} | loss {row['train_loss']:.3f}{acc} | "
            f"up {row['upload_bytes'] / 1e3:.1f} kB down {row['download_bytes'] / 1e3:.1f} kB | "
            f"{row['seconds']:.1f}s",
            flush=True,
        )

    def _train_round(
        self, strategy, server_round: int, global_state: State, phase: str
    ) -> tuple[State, dict[str, Any]]:
        cfg, clock = self.cfg, RoundClock()
        random.seed(mix_seed(cfg.seed, server_round, "sample"))  # Flower samples with `random`
        conf = ConfigRecord({"phase": phase})
        msgs = list(
            strategy.configure_train(server_round, state_to_record(global_state), conf, self.grid)
        )
        clock.lap("sample_s")
        if phase == "adapter" and cfg.secagg:
            return self._secagg_round(strategy, server_round, global_state, msgs)
        tiers = parse_tiers(cfg.lora_tier_ranks) if phase == "adapter" else ()
        if tiers:  # HetLoRA: each client downloads its tier's slice (server.hetlora_round)
            slice_messages(msgs, global_state, lambda n: client_rank(cfg, self.partition_of[n]))
        download = sum(wire_bytes(m.content) for m in msgs)
        replies = list(self.grid.send_and_receive(msgs, timeout=cfg.round_timeout))
        clock.lap("train_s")
        # Float sums depend on their order, and replies arrive in any order: fold them in
        # partition order, so that a resumed run repeats an uninterrupted one exactly.
        replies.sort(key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        if tiers:
            screened = screen_tiers(
                replies,
                global_state,
                set(trainable_global_keys(cfg)),
                tiers,
                base_sha256=self.base_sha,
                max_bytes=cfg.max_reply_bytes,
                clip_norm=cfg.clip_norm,
                fold_by=_linear_weight_key(strategy, cfg),
                max_examples=cfg.max_num_examples,
                weight_ratio=cfg.weight_ratio,
                norm_ratio=cfg.norm_ratio,
            )
        elif phase == "adapter":
            screened = screen(
                replies,
                global_state,
                set(trainable_global_keys(cfg)),
                self.base_sha,
                cfg.max_reply_bytes,
                cfg.clip_norm,
                fold_by=_linear_weight_key(strategy, cfg),
                max_examples=cfg.max_num_examples,
                dp=cfg.dp_noise_multiplier > 0,
                robust=_robust_rule(cfg),
                weight_ratio=cfg.weight_ratio,
                norm_ratio=cfg.norm_ratio,
            )
        else:
            screened = screen_full(replies, global_state, cfg.max_num_examples)
        accepted, upload, clients = screened.accepted, screened.upload_bytes, screened.clients
        rejected = dict(screened.rejected)
        missing = len(msgs) - len(replies)
        if missing:
            rejected["timeout"] = missing
        loss = None
        if accepted:
            arrays, metrics = strategy.aggregate_train(server_round, accepted)
            if arrays is not None and (broken := _not_finite(arrays)):
                log.warning(
                    "round %d: the aggregate holds NaN or Inf in %s; the global adapter stays "
                    "as it was",
                    server_round,
                    broken,
                )
                rejected["non-finite-aggregate"] = clients
                clients, arrays, metrics = 0, None, None
            if arrays is not None:
                global_state = record_to_state(arrays)
            loss = None if metrics is None else float(metrics.get("train_loss", float("nan")))
        else:
            log.warning(
                "round %d: no usable reply; the global adapter stays as it was", server_round
            )
        loss = loss if loss is not None else float("nan")
        row = _round_row(server_round, clients, upload, download, loss, rejected)
        clock.lap("aggregate_s")
        row.update(clock.laps, server_peak_rss_mb=peak_rss_mb(), **workers_of(replies))
        if phase == "adapter" and (eps := dp_epsilon(strategy)) is not None:
            row["dp_epsilon"] = eps
        return global_state, row

    def _secagg_round(
        self, strategy, server_round: int, global_state: State, msgs: list[Message]
    ) -> tuple[State, dict[str, Any]]:
        """The same sample as a plain round, aggregated under SecAgg+ (see server.secagg)."""
        nodes = [m.metadata.dst_node_id for m in msgs]
        cfg = self.cfg
        trainable = sorted(trainable_global_keys(cfg))
        res = secagg.run_round(
            self.grid, self.context, nodes, global_state, trainable, server_round, cfg
        )
        rejected = {"dropped": len(nodes) - res.clients} if res.clients < len(nodes) else {}
        bad = secagg_rejections(res.num_examples, cfg.max_num_examples, cfg.secagg_max_weight)
        clients = 0 if bad else res.clients
        if bad:  # one bad weight skews or overflows the masked sum: the mean is void
            rejected.update(bad)
            log.warning("round %d: SecAgg+ mean voided, bad num-examples %s", server_round, bad)
        elif res.mean_delta is not None:
            reply = mean_reply(global_state, res.mean_delta, sum(res.num_examples), res.train_loss)
            arrays, _ = strategy.aggregate_train(server_round, [reply])
            if broken := _not_finite(arrays):
                log.warning(
                    "round %d: the SecAgg+ aggregate is not finite (%s)", server_round, broken
                )
                rejected["non-finite-aggregate"] = res.clients
                clients = 0
            else:
                global_state = record_to_state(arrays)
        # metrics left out of the loss mean (a bad num-examples is already counted in bad)
        rejected.update({k: rejected.get(k, 0) + n for k, n in (res.skipped_metrics - bad).items()})
        row = _round_row(
            server_round,
            clients,
            res.upload_bytes,
            res.download_bytes,
            res.train_loss,
            rejected,
        )
        return global_state, row

    def _run_phase(self, phase: str, global_state: State) -> tuple[State, list[dict]]:
        """Every round of one phase from `global_state`, or, when resuming, from its last
        checkpoint (read once: the full model's is 90 MB); checkpointed after each round."""
        cfg, folder = self.cfg, self._checkpoints(phase)
        strategy = (
            build_strategy(cfg)
            if phase == "adapter"
            else build_strategy(
                SimConfig.from_dict(
                    {**cfg.to_dict(), "strategy": "fedavg", "dp_noise_multiplier": 0.0}
                )
            )
        )
        start, rows = 1, []
        saved = checkpoint.read_latest(folder) if cfg.resume else None
        if saved is not None:
            done, global_state, strategy_tensors, progress, accountant = saved
            start, rows = done + 1, progress["rows"]
            checkpoint.restore_strategy_state(strategy, strategy_tensors, accountant)
            which = "" if phase == "adapter" else " the full-model baseline"
            print(f"resuming{which} after round {done}", flush=True)
            if phase == "adapter":
                self._keep_final_eval(done, progress)
        for r in range(start, cfg.rounds + 1):
            t0 = time.time()
            global_state, row = self._train_round(strategy, r, global_state, phase)
            # the full-model baseline is evaluated once, at the end (it is the costly part)
            if phase == "adapter" and (r % cfg.evaluate_every == 0 or r == cfg.rounds):
                last = r == cfg.rounds  # the final evaluation, with the baselines in one pass
                t_eval, nodes = time.perf_counter(), self.grid.get_node_ids()
                per = evaluate_all(
                    self.grid,
                    nodes if last else round_sample(nodes, cfg, r),
                    state_to_record(global_state),
                    cfg,
                    r,
                    phase,
                    baselines=last and cfg.baselines,
                )
                self.final_eval = per if last else None
                row["global_accuracy"] = report.mean_of(per, "global_accuracy")
                row["personalized_accuracy"] = report.mean_of(per, "personalized_accuracy")
                row["evaluate_s"] = round(time.perf_counter() - t_eval, 4)
            row["seconds"] = round(time.time() - t0, 2)
            rows.append(row)
            self._progress("adapters" if phase == "adapter" else "full-model FedAvg", row)
            progress: dict[str, Any] = {"rows": rows}
            if phase == "adapter" and r == cfg.rounds and self.final_eval:  # kept for a resume
                progress.update(final_eval=self.final_eval, final_baselines=cfg.baselines)
            checkpoint.write(folder, r, global_state, strategy, progress)
            if phase == "adapter":
                report.write_metrics_csv(self.out / "metrics.csv", rows)
            if (
                phase == "adapter"
                and cfg.publish_every
                and (r % cfg.publish_every == 0 or r == cfg.rounds)
            ):
                self._publish(global_state, r)
        return global_state, rows

    def _checkpoints(self, phase: str) -> Path:
        """The full-model baseline is checkpointed too (90 MB a round, 2 kept): on rt-full it
        is an hour of rounds that a killed run would otherwise repeat."""
        root = self.out / "checkpoints"
        return root if phase == "adapter" else root / "full-model"

    def _keep_final_eval(self, done: int, progress: dict[str, Any]) -> None:
        """Resumed after its last round, a run reuses that round's evaluation of every client
        (39 min on rt-full) unless it now wants baselines that the evaluation lacked."""
        cfg, final = self.cfg, progress.get("final_eval")
        if done == cfg.rounds and final and progress["final_baselines"] >= cfg.baselines:
            self.final_eval = {int(k): v for k, v in final.items()}
            print(f"the final evaluation of round {done} is kept from the checkpoint")

    @cached_property
    def adapter_model(self) -> AdapterModel:
        """One model to write adapter folders with: building it loads and quantizes the base."""
        return build_model(self.cfg)

    def _save_global(self, global_state: State, folder: Path, version: int, **extra: Any) -> Path:
        self.adapter_model.load_adapter_state(GLOBAL, global_state)
        extra = {"label_names": label_names(self.cfg.dataset), **extra}
        return save_adapter(self.adapter_model, GLOBAL, folder, version=version, extra=extra)

    def _publish(self, global_state: State, server_round: int) -> None:
        """Sign the global adapter into the update registry, for devices to fetch."""
        cfg = self.cfg
        folder = self._save_global(
            global_state, self.out / "published" / f"round-{server_round:04d}", server_round
        )
        entry = publish(folder, cfg.publish_registry, self.publish_key, name="global")
        print(
            f"published the round-{server_round} global adapter as version {entry['version']}",
            flush=True,
        )

    def execute(self) -> dict[str, Any]:
        """Run everything and write the outputs: config.json, per-round checkpoints (a resume
        continues from them; without `resume` older ones are deleted first), metrics.csv, the
        final adapter, report.json and the plots.

        Returns
        -------
        dict
            The report, as written to report.json.
        """
        cfg, t_start = self.cfg, time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if not cfg.resume:  # a later resume must not pick up an older run's checkpoints
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        # the full-model baseline of another run, checked before any round; reading it costs
        # nothing, so it is taken even where this run skips its own (costly) baselines
        reused = None
        if cfg.full_model_baseline and cfg.full_model_from:
            reused = full_model_reuse.load(cfg)
            full_model_reuse.check_clients(reused, self.partition_of.values())
        global_state, rows = self._run_phase("adapter", build_fresh_global(cfg))

        nodes = self.grid.get_node_ids()
        per_client = self.final_eval or evaluate_all(  # not kept in an older checkpoint
            self.grid,
            nodes,
            state_to_record(global_state),
            cfg,
            cfg.rounds,
            "adapter",
            baselines=cfg.baselines,
        )
        if not per_client:
            print(
                "the report's final figures are empty: no client gave figures in the final "
                "evaluation (the line above says why)",
                flush=True,
            )
        full_rows: list[dict] = []
        full_model = build_model(cfg, full_model=True)
        if reused is not None:
            full_model_reuse.merge(per_client, reused)
            full_rows = reused.rounds
            print(f"the full-model FedAvg baseline is taken from {reused.report}", flush=True)
        elif cfg.baselines and cfg.full_model_baseline:
            full_state, full_rows = self._run_phase("full", full_model_state(full_model))
            full = evaluate_all(
                self.grid, nodes, state_to_record(full_state), cfg, cfg.rounds, "full"
            )
            for pid, m in full.items():
                per_client.setdefault(pid, {})["full_model_accuracy"] = m["global_accuracy"]
                per_client[pid]["full_model_personalized_accuracy"] = m["personalized_accuracy"]
        out = self._report(global_state, rows, full_rows, per_client, full_model, t_start)
        return out

    def _report(
        self, global_state: State, rows, full_rows, per_client, full_model, t_start
    ) -> dict:
        cfg = self.cfg
        self._save_global(
            global_state,
            self.out / "adapter",
            cfg.rounds,
            rounds=cfg.rounds,
            strategy=cfg.aggregation,
        )
        base = self.adapter_model.base
        trainable = sum(
            v.numel() for k, v in global_state.items() if k in trainable_global_keys(cfg)
        )
        full_msg = wire_bytes(RecordDict({"arrays": state_to_record(full_model_state(full_model))}))
        out = report.assemble(
            cfg, base, trainable, rows, full_rows, per_client, full_msg, time.time() - t_start
        )
        final = out["final"]
        report.write_metrics_csv(self.out / "metrics.csv", rows)
        report.write_report(self.out, out)
        report.plot(self.out, rows, full_rows, final)
        print(
            json.dumps({"final": final, "communication": out["communication"]}, indent=1),
            flush=True,
        )
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's ServerApp entry point: run the run config to the end (under HetLoRA tiers, with
    `lora_r` set to the largest tier's rank).
    """
    cfg = global_config(SimConfig.from_run_config(dict(context.run_config)))  # HetLoRA: rank R
    FederatedRun(cfg, grid, context).execute()
