"""What a reply's metrics claim, believed only once checked.

A client's `num-examples` is its weight in FedAvg and in the server optimizers over it: one
client claiming a billion examples would own the global adapter. So every metric the server
uses is checked as strictly as the delta: present, of the right type, finite and in bounds.
`num-examples` counts the examples a client trained on (not examples x epochs), so it can be
capped by `max_num_examples`. Under accounted central DP every weight must be exactly 1,
or Flower's DP wrapper refuses the whole round.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from flwr.app import MetricRecord, RecordDict

from fedadapt.errors import DeltaError

# A training loss past this is no loss a client computed honestly: cross-entropy over a few
# classes starts near ln(classes) and only falls. One reply of 1e308 made the round's loss Inf.
MAX_TRAIN_LOSS = 1e3


@dataclass(frozen=True)
class Claims:
    """A reply's metrics once checked (`read_claims`): `num-examples` a positive integer within the
    cap, `train_loss` a finite number >= 0. Only these reach the strategy.
    """

    num_examples: int
    train_loss: float

    def weight(self, key: str) -> float:
        """The reply's weight under the strategy's `weighted_by_key`."""
        return float(self.num_examples) if key == "num-examples" else 1.0

    def metrics(self, dp: bool) -> dict[str, int | float]:
        """Only the checked metrics, for the strategy to aggregate."""
        out: dict[str, int | float] = {
            "num-examples": self.num_examples,
            "train_loss": self.train_loss,
        }
        return out | ({"dp-weight": 1.0} if dp else {})


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_num_examples(n: object, cap: float) -> int:
    """`n` as a positive integer no larger than `cap` (0: no cap), or `DeltaError`."""
    if n is None:
        raise DeltaError("no num-examples in the metrics", reason="num-examples")
    if isinstance(n, bool) or not isinstance(n, int):
        raise DeltaError(
            f"num-examples must be an integer, got {type(n).__name__} {str(n)[:32]}",
            reason="num-examples",
        )
    if n <= 0:
        raise DeltaError(f"num-examples must be positive, got {n}", reason="num-examples")
    if cap and n > cap:
        raise DeltaError(
            f"num-examples {n} exceeds the cap of {cap:g} (max_num_examples)",
            reason="num-examples-cap",
        )
    return n


def secagg_rejections(num_examples: list[object], cap: int, max_weight: float) -> Counter:
    """Reasons to void a SecAgg+ round's mean, counted per bad claim (empty: keep it).

    Each client scales its masked delta by `num-examples / secagg_max_weight`: a claim above
    `max_weight` overflows the fixed-point sum, and any claim above the cap buys the claimer
    the mean. The server sees every claim but not which delta it weighs, so one bad claim
    voids the whole round.
    """
    limit = min(cap, max_weight) if cap else max_weight
    out: Counter = Counter()
    for n in num_examples:
        try:
            check_num_examples(n, limit)
        except DeltaError as e:
            out[e.reason] += 1
    return out


def check_train_loss(metrics: MetricRecord) -> float:
    """The reply's `train_loss` as a number in [0, `MAX_TRAIN_LOSS`], or `DeltaError` (a NaN,
    negative or absurd loss would poison the round's mean loss, plain or SecAgg+)."""
    loss = metrics.get("train_loss")
    if not _number(loss) or not math.isfinite(loss) or not 0 <= loss <= MAX_TRAIN_LOSS:
        raise DeltaError(
            f"train_loss must be a number in [0, {MAX_TRAIN_LOSS:g}], got {str(loss)[:32]}",
            reason="train-loss",
        )
    return float(loss)


def read_claims(content: RecordDict, cap: int, dp: bool) -> Claims:
    """The reply's checked metrics, or `DeltaError` naming the first one that is wrong."""
    metrics = content.get("metrics")
    if not isinstance(metrics, MetricRecord):
        got = "none" if metrics is None else type(metrics).__name__
        raise DeltaError(f"'metrics' must be a MetricRecord, got {got}", reason="metrics")
    claims = Claims(check_num_examples(metrics.get("num-examples"), cap), check_train_loss(metrics))
    w = metrics.get("dp-weight")
    if dp and (not _number(w) or w != 1):
        raise DeltaError(
            f"dp-weight must be 1 under central DP, got {str(w)[:32]}", reason="dp-weight"
        )
    return claims


MAX_METRIC = 1e9  # any other number an evaluation reports (a count, a loss)


def read_evaluation(metrics: MetricRecord, cap: int) -> dict[str, float]:
    """An evaluation reply's metrics once checked, or `DeltaError`: the report averages them
    over clients, so one absurd value would move every figure. `partition-id` an integer
    >= 0, `num-examples` as in training, every `*accuracy` in [0, 1], anything else finite
    and within `MAX_METRIC`."""
    if not isinstance(metrics, MetricRecord):
        raise DeltaError("'metrics' must be a MetricRecord", reason="metrics")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not _number(value):
            raise DeltaError(f"{key} must be a number", reason="metrics")
        # bounded before any float arithmetic: a huge int overflows `isfinite`
        if isinstance(value, int) and abs(value) > MAX_METRIC:
            raise DeltaError(f"{key} is out of bounds", reason="metrics")
        if not math.isfinite(value):
            raise DeltaError(f"{key} must be a finite number", reason="metrics")
        if key.endswith("accuracy") and not 0 <= value <= 1:
            raise DeltaError(f"{key} must be in [0, 1], got {str(value)[:32]}", reason="metrics")
        if abs(value) > MAX_METRIC:
            raise DeltaError(f"{key} is out of bounds: {str(value)[:32]}", reason="metrics")
        out[key] = value
    pid = out.get("partition-id")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise DeltaError("partition-id must be an integer >= 0", reason="metrics")
    if "num-examples" in out:
        check_num_examples(out["num-examples"], cap)
    return out
