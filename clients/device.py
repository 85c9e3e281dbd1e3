"""What one device does in a federated run, with no Flower types in sight.

A `Device` holds one client's data and a model over the frozen quantized base, built once per
process and reused every round. The global adapter arrives as tensors; what leaves is the
delta of the trainable global tensors only. The personal adapter and head never leave: the
caller keeps `personal` state on the device (Flower's node state) between rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import torch

from fedadapt.adapters import AdapterModel, Stack
from fedadapt.base.checkpoint import load_tokenizer
from fedadapt.data import ClientData
from fedadapt.data.partitions import client_data
from fedadapt.deltas import State, compute_delta
from fedadapt.ditto import proximal_term
from fedadapt.head_bias import fit_head_bias
from fedadapt.model_setup import (
    GLOBAL,
    PERSONAL,
    build_fresh_global,
    cached_model,
    fresh_personal,
    full_model_state,
    load_full_model_state,
    mix_seed,
    trainable_global_keys,
)
from fedadapt.simconfig import (
    HEAD_BIAS_MODES,
    PERSONAL_ADAPTER_MODES,
    SimConfig,
    full_model_personalization,
)
from fedadapt.train import TrainConfig, accuracy, embed, predict, train, train_probe

log = logging.getLogger("fedadapt.clients")


@dataclass
class Device:
    """One client's part in a run: its data, and the process's cached model for its config.

    The model is shared: it holds whatever was loaded last (in a simulation, maybe another
    client's), so every method loads the state it needs first. Build one with `create`.
    """

    cfg: SimConfig
    partition_id: int
    model: AdapterModel
    fresh_personal: State
    head_bias = None  # the last head bias fitted here (not a field); the app keeps it
    data: ClientData

    @classmethod
    def create(
        cls,
        cfg: SimConfig,
        partition_id: int,
        full_model: bool = False,
        data: ClientData | None = None,
    ) -> Device:
        """The device of partition `partition_id`: its own `data`, else the demo partition."""
        model = cached_model(cfg, full_model)
        fresh = {} if full_model else fresh_personal(cfg)
        data = data if data is not None else client_data(cfg, partition_id)
        return cls(cfg, partition_id, model, fresh, data)

    def usable_personal(
        self, personal: State | None, expected: State | None = None
    ) -> State | None:
        """A kept personal part, unless its tensors no longer fit this config's personal
        adapter (e.g. `personal_layers` changed since it was saved), or `expected` (Ditto's
        copy of the global adapter): then start afresh."""
        if personal is None:
            return None
        expected = self.fresh_personal if expected is None else expected
        fits = set(personal) == set(expected) and all(
            personal[k].shape == expected[k].shape for k in expected
        )
        if not fits:
            log.warning("the kept personal adapter does not fit this run's; starting a new one")
        return personal if fits else None

    def _train_cfg(
        self,
        server_round: int,
        purpose: str,
        epochs: int,
        lr: float | None = None,
        max_steps: int | None = None,
    ) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            lr=lr or c.lr,
            batch_size=c.batch_size,
            epochs=epochs,
            max_length=c.max_length,
            max_steps=max_steps,
            seed=mix_seed(c.seed, server_round, self.partition_id, purpose),
        )

    def _fit(self, tc: TrainConfig, extra=None) -> dict[str, float]:
        d = self.data
        return train(
            self.model,
            _tokenizer(self.cfg.max_length),
            d.train_texts,
            d.train_labels,
            tc,
            extra_loss=extra,
        )

    def _logits(self, texts: list[str]) -> torch.Tensor:
        return predict(
            self.model, _tokenizer(self.cfg.max_length), texts, max_length=self.cfg.max_length
        )

    def _accuracy(self) -> float:
        return accuracy(self._logits(self.data.test_texts), self.data.test_labels)

    def _head_bias_accuracies(self) -> tuple[float, float]:
        """The active model's test accuracy as it is, and with a head bias fitted here on its
        own training logits (kept in `head_bias` for the device's personalized file)."""
        d = self.data
        test = self._logits(d.test_texts)
        labels = torch.tensor(d.train_labels, dtype=torch.long)
        bias = fit_head_bias(self._logits(d.train_texts), labels, self.cfg.head_bias_l2)
        self.head_bias = bias
        return accuracy(test, d.test_labels), accuracy(test + bias, d.test_labels)

    def _accuracies_with_head_bias(self) -> dict[str, float]:
        plain, biased = self._head_bias_accuracies()
        return {"global_accuracy": plain, "personalized_accuracy": biased}

    # -- the adapter run ----------------------------------------------------------------
    def train_global(self, global_state: State, server_round: int) -> tuple[State, dict]:
        """Train the global adapter and head locally; return the delta of trainable tensors."""
        m = self.model
        m.load_adapter_state(GLOBAL, global_state)
        m.train_adapter(GLOBAL)
        start = {k: v.clone() for k, v in m.adapter_state(GLOBAL, trainable_only=True).items()}
        extra = None
        if self.cfg.strategy == "fedprox" and self.cfg.proximal_mu > 0:
            extra = proximal_term(m.adapter_parameters(GLOBAL), start, self.cfg.proximal_mu)
        stats = self._fit(self._train_cfg(server_round, "global", self.cfg.local_epochs), extra)
        delta = compute_delta(m.adapter_state(GLOBAL, trainable_only=True), start)
        return delta, stats

    def train_personal(
        self, global_state: State, personal: State | None, server_round: int
    ) -> State:
        """FedRep/FedPer: a personal adapter and head on top of the frozen global adapter."""
        m = self.model
        m.load_adapter_state(GLOBAL, global_state)
        personal = self.usable_personal(personal)
        if personal is None:  # a new personal part: fresh adapter, head from the global head
            heads = {k: v for k, v in global_state.items() if k.startswith("head.")}
            personal = {**self.fresh_personal, **heads}
        m.load_adapter_state(PERSONAL, personal)
        m.train_adapter(Stack(GLOBAL, PERSONAL), only=[PERSONAL])
        tc = self._train_cfg(
            server_round, "personal", self.cfg.personal_epochs, lr=self.cfg.personal_lr
        )
        self._fit(tc)
        return m.adapter_state(PERSONAL)

    def train_ditto(self, global_state: State, personal: State | None, server_round: int) -> State:
        """Ditto: this device's copy of the global adapter and head, trained on from where the
        last round left it (from the global at first), pulled towards this round's global by
        `ditto_lambda` (fedadapt/ditto.py). The global slot is restored afterwards."""
        m = self.model
        personal = self.usable_personal(personal, global_state)
        m.load_adapter_state(GLOBAL, global_state if personal is None else personal)
        m.train_adapter(GLOBAL)
        anchor = {k: global_state[k] for k in trainable_global_keys(self.cfg)}
        pull = proximal_term(m.adapter_parameters(GLOBAL), anchor, self.cfg.ditto_lambda)
        tc = self._train_cfg(
            server_round, "ditto", self.cfg.personal_epochs, lr=self.cfg.personal_lr
        )
        self._fit(tc, pull)
        trained = m.adapter_state(GLOBAL)
        m.load_adapter_state(GLOBAL, global_state)
        return trained

    def evaluate(
        self, global_state: State, personal: State | None, server_round: int
    ) -> tuple[dict[str, float], State | None]:
        """Accuracy of the global adapter and of this device's personalized model: the
        personal stack (FedRep, plus a head bias fitted on top in "fedrep-head-bias"), the
        Ditto copy with its own head in the global slot, or the global plus a head bias.

        Returns the personal state to keep (None where there is none): the one it was given,
        or one trained now where the device had none that fits.
        """
        m, mode = self.model, self.cfg.personalization
        m.load_adapter_state(GLOBAL, global_state)
        m.set_active(GLOBAL)
        if mode == "head-bias":
            return self._accuracies_with_head_bias(), None
        out = {"global_accuracy": self._accuracy()}
        if mode in PERSONAL_ADAPTER_MODES:
            personal = self.usable_personal(personal)
            if personal is None:  # never trained here yet: personalize now, on the device
                personal = self.train_personal(global_state, None, server_round)
            m.load_adapter_state(PERSONAL, personal)
            m.set_active(Stack(GLOBAL, PERSONAL))
        elif mode == "ditto":
            personal = self.usable_personal(personal, global_state)
            if personal is None:
                personal = self.train_ditto(global_state, None, server_round)
            m.load_adapter_state(GLOBAL, personal)
            m.set_active(GLOBAL)
        else:
            m.train_adapter(GLOBAL)
            self._fit(
                self._train_cfg(server_round, "finetune", 100, max_steps=self.cfg.finetune_steps)
            )
        if mode in HEAD_BIAS_MODES:
            # the stack alone is FedRep's figure from the same training (the bias is fitted
            # only here, on top): one run measures both ways
            out["personal_stack_accuracy"], out["personalized_accuracy"] = (
                self._head_bias_accuracies()
            )
        else:
            out["personalized_accuracy"] = self._accuracy()
        m.load_adapter_state(GLOBAL, global_state)
        return out, personal

    def baselines(self) -> dict[str, float]:
        """local-only adapters, a zero-shot head on the frozen base, and the local majority."""
        m, d = self.model, self.data
        fresh = build_fresh_global(self.cfg)
        m.load_adapter_state(GLOBAL, fresh)
        m.train_adapter(GLOBAL)
        self._fit(self._train_cfg(0, "local-only", self.cfg.local_only_epochs))
        local_only = self._accuracy()
        m.load_adapter_state(GLOBAL, fresh)
        zero_shot = self._zero_shot_accuracy()
        m.load_adapter_state(GLOBAL, fresh)
        majority = sum(y == d.majority_label() for y in d.test_labels) / len(d.test_labels)
        return {
            "local_only_accuracy": local_only,
            "zero_shot_accuracy": zero_shot,
            "local_majority_accuracy": majority,
        }

    def _zero_shot_accuracy(self) -> float:
        """A head fitted on the frozen base's features, on the local-only budget."""
        m, d, c = self.model, self.data, self.cfg
        m.train_head(GLOBAL)
        tok = _tokenizer(c.max_length)
        train_feats = embed(m, tok, d.train_texts, max_length=c.max_length)
        train_probe(
            m.heads[GLOBAL],
            train_feats,
            d.train_labels,
            self._train_cfg(0, "zero-shot", c.local_only_epochs),
        )
        return self._accuracy()

    # -- the full-model FedAvg baseline -----------------------------------------------------
    def train_full(self, state: State, server_round: int) -> tuple[State, dict]:
        """The full-model FedAvg baseline's local step: load every weight, train them all, and
        return the full trained state (not a delta, as stock FedAvg expects) and the stats.
        """
        m = self.model
        load_full_model_state(m, state)
        m.set_active(None, head=GLOBAL)
        m.requires_grad_(True)
        tc = self._train_cfg(
            server_round, "full", self.cfg.full_model_epochs, lr=self.cfg.full_model_lr
        )
        stats = self._fit(tc)
        return full_model_state(m), stats

    def evaluate_full(self, state: State, server_round: int) -> dict[str, float]:
        """The full-model baseline's accuracy, global and personalized the way
        `full_model_personalization` picks: a head bias fitted here, or (for "finetune") a short
        fine-tune of every weight, undone before returning.
        """
        m = self.model
        load_full_model_state(m, state)
        m.set_active(None, head=GLOBAL)
        if full_model_personalization(self.cfg.personalization) == "head-bias":
            return self._accuracies_with_head_bias()  # see `full_model_personalization`
        out = {"global_accuracy": self._accuracy()}
        m.requires_grad_(True)
        self._fit(
            self._train_cfg(
                server_round,
                "full-finetune",
                100,
                lr=self.cfg.full_model_lr,
                max_steps=self.cfg.finetune_steps,
            )
        )
        out["personalized_accuracy"] = self._accuracy()
        load_full_model_state(m, state)
        return out


@cache
def _tokenizer(max_length: int):
    return load_tokenizer(max_length)
