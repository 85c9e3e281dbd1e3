"""Personalization in numpy alone, over the embeddings a device's ONNX graph gives.

A device without torch cannot backpropagate through its adapters, but the head is a linear
layer on the pooled embedding, and the graph outputs that embedding (`EdgeRuntime.embed`).
Over it a device can still personalize, cheaply and deterministically:

- the head bias: one offset per class on the global logits (`fedadapt/head_bias.py`'s
  fit, here by Newton's method instead of torch's L-BFGS);
- a personal head: a few full-batch gradient steps of softmax cross-entropy from the global
  head, with an L2 pull back toward it (a client has ~25 examples: unpulled, it overfits);
- kNN-Per (Marfoq et al., ICML 2022): a memory of the device's own training embeddings;
  a query's k nearest vote, and the vote is mixed with the model's softmax,
  `p = lam * p_knn + (1 - lam) * softmax(logits)`. Where the device's labels follow its
  own local pattern that the global head gets wrong, the memory fixes it; where the memory
  is useless, lam = 0 leaves the global model as it is.

k and lam are chosen on a validation slice cut from the TRAIN split (a seeded 30%, fixed),
the memory holding the other 70%. Choosing them on the held-out split and then reporting
on it would be optimistic; the held-out split stays for the report. One bias remains: the
global model was trained (federated) on these train rows too, so its validation accuracy
is flattering, which only makes the choice lean toward lam = 0, the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPERATURE = 0.1  # softmax temperature of the cosine similarities of the k nearest
VALIDATION_FRACTION = 0.3
KS = (1, 3, 5, 10)
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
HEAD_L2 = 0.1  # the personal head's pull toward the global head
HEAD_STEPS = 100
BIAS_L2 = 0.1  # as `fedadapt.head_bias.DEFAULT_L2`


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero): cosine similarity is then a
    dot product, and a memory does not favour long texts' larger embeddings."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row max so large logits do not overflow."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose arg-max is the label (0.0 for no rows, never NaN)."""
    y = np.asarray(y)
    return float((np.asarray(p).argmax(axis=1) == y).mean()) if len(y) else 0.0


@dataclass
class KnnMemory:
    """The device's training embeddings (unit rows) and labels: kNN-Per's local memory.

    It is derived from the user's texts, so whoever stores it keeps it private (0600).
    """

    keys: np.ndarray  # [n, d], unit rows
    labels: np.ndarray  # [n] int64
    num_classes: int
    temperature: float = TEMPERATURE

    @classmethod
    def build(
        cls, emb: np.ndarray, labels: np.ndarray, num_classes: int, temperature: float = TEMPERATURE
    ) -> KnnMemory:
        """A memory of `emb` rows; the labels must be in [0, num_classes)."""
        labels = np.asarray(labels, np.int64)
        if len(emb) != len(labels):
            raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes})")
        return cls(unit_rows(emb), labels, num_classes, temperature)

    def predict_proba(self, emb: np.ndarray, k: int) -> np.ndarray:
        """The vote of each query's k nearest (by cosine), weighted by a softmax of their
        similarities over `temperature`: near neighbours count more than far ones. An empty
        memory votes uniformly. Ties in similarity go to the earlier row (stable sort), so
        the answer never depends on the platform."""
        q = unit_rows(emb)
        out = np.full((len(q), self.num_classes), 1.0 / self.num_classes)
        if not len(self.labels) or not len(q):
            return out
        k = max(1, min(int(k), len(self.labels)))
        sims = q @ self.keys.T
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(sims, nearest, axis=1)
        w = softmax(top / self.temperature)
        out = np.zeros((len(q), self.num_classes))
        rows = np.repeat(np.arange(len(q)), k)
        np.add.at(out, (rows, self.labels[nearest].ravel()), w.ravel())
        return out


def interpolate(p_knn: np.ndarray, logits: np.ndarray, lam: float) -> np.ndarray:
    """kNN-Per's prediction: `lam * p_knn + (1 - lam) * softmax(logits)`."""
    return lam * np.asarray(p_knn, np.float64) + (1.0 - lam) * softmax(logits)


def validation_rows(n: int, fraction: float = VALIDATION_FRACTION, seed: int = 0) -> np.ndarray:
    """A boolean mask of the train rows kept for choosing: a seeded `fraction`, at least
    one row and never all (the memory keeps at least one), none when n < 2."""
    mask = np.zeros(n, bool)
    if n < 2:
        return mask
    count = min(n - 1, max(1, round(fraction * n)))
    mask[np.random.default_rng(seed).permutation(n)[:count]] = True
    return mask


@dataclass(frozen=True)
class KnnChoice:
    """The chosen k and lam, with the validation accuracy that chose them."""

    k: int
    lam: float
    validation_accuracy: float


def choose(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    train_logits: np.ndarray,
    num_classes: int,
    ks: tuple[int, ...] = KS,
    lambdas: tuple[float, ...] = LAMBDAS,
    seed: int = 0,
    temperature: float = TEMPERATURE,
) -> KnnChoice:
    """k and lam for kNN-Per, chosen on a seeded validation slice of the TRAIN rows (see the
    module docstring: never on the held-out rows it is reported on).

    The memory holds the other train rows; the best validation accuracy wins, ties to the
    smaller lam (the global model unchanged is the default a device should need evidence
    to leave), then to the smaller k. Too few rows to cut a slice: lam = 0.
    """
    train_y = np.asarray(train_y, np.int64)
    val = validation_rows(len(train_y), seed=seed)
    if not val.any():
        return KnnChoice(min(ks), 0.0, 0.0)
    memory = KnnMemory.build(train_emb[~val], train_y[~val], num_classes, temperature)
    best: tuple[float, float, int] | None = None
    for lam in sorted(lambdas):
        for k in sorted(ks):
            p = interpolate(memory.predict_proba(train_emb[val], k), train_logits[val], lam)
            acc = accuracy(p, train_y[val])
            if best is None or acc > best[0] + 1e-12:
                best = (acc, lam, k)
    assert best is not None
    return KnnChoice(best[2], float(best[1]), best[0])


def fit_bias(logits: np.ndarray, labels: np.ndarray, l2: float = BIAS_L2) -> np.ndarray:
    """The per-class offset `b` minimising `CE(logits + b, labels) + l2/2 |b|^2`: the head
    bias of `fedadapt/head_bias.py` without torch. The problem is C-dimensional and strongly
    convex (l2 > 0), so Newton's method with a halving line search converges in a few
    steps, deterministically."""
    if l2 <= 0:
        raise ValueError("l2 must be > 0: a client with one label would push the bias to infinity")
    z = np.asarray(logits, np.float64)
    y = np.eye(z.shape[1])[np.asarray(labels, np.int64)]
    n = max(len(z), 1)

    def loss(b: np.ndarray) -> float:
        s = z + b
        lse = s.max(axis=1) + np.log(np.exp(s - s.max(axis=1, keepdims=True)).sum(axis=1))
        return float((lse - (s * y).sum(axis=1)).sum() / n + 0.5 * l2 * b @ b)

    b = np.zeros(z.shape[1])
    for _ in range(50):
        p = softmax(z + b)
        grad = (p - y).sum(axis=0) / n + l2 * b
        if np.abs(grad).max() < 1e-10:
            break
        hess = (np.diag(p.sum(axis=0)) - p.T @ p) / n + l2 * np.eye(len(b))
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(b)
        while loss(b - t * step) > before and t > 1e-8:
            t /= 2
        b = b - t * step
    return b.astype(np.float32)


def cross_entropy(
    emb: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> float:
    """Mean softmax cross-entropy of the linear head `(weight, bias)` on `emb`."""
    p = softmax(np.asarray(emb, np.float64) @ np.asarray(weight, np.float64).T + bias)
    y = np.asarray(labels, np.int64)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)).mean()) if len(y) else 0.0


def fit_personal_head(
    emb: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    l2: float = HEAD_L2,
    steps: int = HEAD_STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """A personal head: `steps` full-batch gradient steps of mean cross-entropy plus
    `l2/2 |(W, b) - (W0, b0)|^2`, from the global head `(W0, b0)`.

    The step is 1/L for L = max |x|^2 / 2 + l2 (with x the embedding and a 1 for the bias),
    a bound on the loss's curvature, so the loss never rises and nothing needs tuning.
    """
    x = np.asarray(emb, np.float64)
    y = np.eye(len(bias))[np.asarray(labels, np.int64)]
    w0, b0 = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    w, b = w0.copy(), b0.copy()
    if not len(x):
        return w.astype(np.float32), b.astype(np.float32)
    lr = 1.0 / (0.5 * float(((x**2).sum(axis=1) + 1.0).max()) + l2)
    n = len(x)
    for _ in range(steps):
        g = (softmax(x @ w.T + b) - y) / n
        w -= lr * (g.T @ x + l2 * (w - w0))
        b -= lr * (g.sum(axis=0) + l2 * (b - b0))
    return w.astype(np.float32), b.astype(np.float32)
