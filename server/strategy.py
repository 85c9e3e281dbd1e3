"""The server's strategy: one of Flower's own, chosen by name, optionally wrapped for DP.

Replies carry adapter *deltas*; before any strategy sees them, `server.replies` turns each
into `global + delta` (the client's adapter). Every stock strategy then does its own math
unchanged: FedAvg's weighted mean of `global + Δ_i` is `global + weighted mean Δ`; FedAdam,
FedYogi and FedAvgM take the pseudo-gradient against the global they sent; trimmed mean and
median are coordinate-wise, so they shift by `global` exactly. Flower's central-DP wrapper
clips `reply − global`, which is then exactly the delta, and its RDP accountant sees the
stock `FedAvg.aggregate_train` it requires.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from fedadapt.simconfig import SimConfig


def build_strategy(cfg: SimConfig) -> Strategy:
    """Build the run's Flower strategy from its config, wrapped for central DP when asked.

    Every strategy samples `clients_per_round` of the `num_clients` nodes each round and
    evaluates none itself (the server evaluates every client for the report). Replies are
    weighted by `num-examples`; under DP by `dp-weight` instead, which every client sets to 1,
    since accounted DP needs equal weights. The strategy sees only `global + delta` replies
    (`server.replies`), so its own math is unchanged (see the module docstring).

    Parameters
    ----------
    cfg : SimConfig
        The run config. Fields read:

        - `strategy`: "fedavg", "fedprox" (`proximal_mu`), "fedadam" and "fedyogi" (server
          learning rate `server_lr`; `lr` is passed as `eta_l`, which the server does not use;
          `tau` is fixed at 1e-6), "fedavgm" (`server_momentum`), "trimmed-mean"
          (`trim_fraction` cut at each end), "krum", "multikrum" and "bulyan" (Flower's stock
          classes, tolerating `krum_malicious` liars; MultiKrum averages `multikrum_select`
          replies, by default all but `krum_malicious`); any other name gets FedMedian, so the
          config must have been checked first.
        - `clients_per_round`, `num_clients`: the sample per round.
        - `dp_noise_multiplier` (> 0 turns DP on), `dp_clipping_norm`, `dp_delta`: server-side
          fixed clipping and Gaussian noise. Only FedAvg gets an RDP accountant (Flower's
          accountant requires FedAvg's `aggregate_train`); other strategies are clipped and
          noised, but no epsilon is accounted.

    Returns
    -------
    Strategy
        The stock strategy, or `DifferentialPrivacyServerSideFixedClipping` around it (the
        inner one is its `.strategy`, which `server.checkpoint` unwraps).
    """
    dp = cfg.dp_noise_multiplier > 0
    common = {
        "fraction_train": cfg.clients_per_round / cfg.num_clients,
        "fraction_evaluate": 0.0,  # the server runs its own per-client evaluation
        "min_train_nodes": cfg.clients_per_round,
        "min_available_nodes": cfg.clients_per_round,
        # accounted DP requires equal client weights
        "weighted_by_key": "dp-weight" if dp else "num-examples",
    }
    name = cfg.aggregation
    if name == "fedavg":
        strategy = FedAvg(**common)
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=cfg.proximal_mu)
    elif name == "fedadam":
        strategy = FedAdam(**common, eta=cfg.server_lr, eta_l=cfg.lr, tau=1e-6)
    elif name == "fedyogi":
        strategy = FedYogi(**common, eta=cfg.server_lr, eta_l=cfg.lr, tau=1e-6)
    elif name == "fedavgm":
        strategy = FedAvgM(**common, server_momentum=cfg.server_momentum)
    elif name == "trimmed-mean":
        strategy = FedTrimmedAvg(**common, beta=cfg.trim_fraction)
    elif name == "krum":
        strategy = Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    elif name == "multikrum":
        select = cfg.multikrum_select or cfg.clients_per_round - cfg.krum_malicious
        strategy = MultiKrum(
            **common, num_malicious_nodes=cfg.krum_malicious, num_nodes_to_select=select
        )
    elif name == "bulyan":
        strategy = Bulyan(**common, num_malicious_nodes=cfg.krum_malicious)
    else:
        strategy = FedMedian(**common)
    if not dp:
        return strategy
    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        cfg.dp_noise_multiplier,
        cfg.dp_clipping_norm,
        cfg.clients_per_round,
        accountant=_accountant(cfg) if name in ("fedavg",) else None,
    )


def _accountant(cfg: SimConfig):
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import (
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )

    return RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=cfg.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def dp_epsilon(strategy: Strategy) -> float | None:
    """The epsilon spent so far under accounted DP (at the config's `dp_delta`); None for a
    strategy without an accountant.
    """
    spent = getattr(strategy, "privacy_spent", lambda: None)()
    return None if spent is None else float(spent.epsilon)
