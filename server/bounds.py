"""The bounds a round puts on what each client claims, relative to the round itself.

No few devices decide for the rest. A client's weight in the mean is the number of examples
it claims, and its pull on the global is its delta's norm: both are claims, and a fixed cap
(`max_num_examples`, `clip_norm`) is either loose enough to let one liar own the round or
tight enough to clip honest clients. Bounding each claim by a multiple of the round's median
holds whatever the task's scale: with fewer than half of the clients lying, the median is an
honest client's value, so a liar gains at most `ratio` honest clients' worth of pull.

- weight: `min(claimed, weight_ratio x median claimed)`;
- delta norm: scaled down to `norm_ratio x median norm` (and to `clip_norm` when set),
  the median-norm bound of "Can You Really Backdoor Federated Learning?" (Sun et al., 2019);
- the mean divides each weight by the round's total before it multiplies a delta, so no
  partial sum grows past the largest delta (one reply of 1e36 times 1000 examples used to
  overflow to Inf where Flower's FedAvg stayed finite).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def weight_cap(claimed: Sequence[int], ratio: float) -> float | None:
    """The round's largest weight: `ratio` times the median claim; None when `ratio` is 0
    (off) or nothing was claimed."""
    if ratio <= 0 or not claimed:
        return None
    return ratio * statistics.median(claimed)


def norm_bound(norms: Sequence[float], ratio: float, fixed: float = 0.0) -> float | None:
    """The round's largest delta norm: `ratio` times the median norm, and at most `fixed`
    (`clip_norm`) when that is set; None when neither bounds it."""
    bounds = []
    if ratio > 0 and norms:
        bounds.append(ratio * statistics.median(norms))
    if fixed > 0:
        bounds.append(fixed)
    return min(bounds) if bounds else None
