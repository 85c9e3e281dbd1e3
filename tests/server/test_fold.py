"""Folding replies with the finite check paid once per block: the same accepted set, the
same reasons and the same mean as a check of every reply."""

import logging

import numpy as np
import pytest
import torch

from fedadapt.records import record_to_state
from fedadapt.server.flat import Layout
from fedadapt.server.fold import BLOCK, BlockFold
from fedadapt.server.replies import screen
from tests.server.test_replies import GLOBAL, SHA, TRAINABLE, _raw, _reply

BAD = {5: float("nan"), BLOCK + 1: float("inf"), 2 * BLOCK + 3: float("-inf")}  # 3 blocks


def _deltas(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [{k: torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()} for _ in range(n)]


def _mean(replies) -> dict[str, torch.Tensor]:
    s = screen(replies, GLOBAL, TRAINABLE, SHA, max_bytes=50_000, fold_by="num-examples")
    return s, record_to_state(s.accepted[0].content["arrays"])


def test_bad_replies_in_any_block_are_refused_and_never_reach_the_mean(caplog):
    n = 2 * BLOCK + 4  # the last bad reply sits in a block only the final flush checks
    deltas = _deltas(n)
    for i, v in BAD.items():
        deltas[i]["x.adapter_up.weight"][1, 0] = v
    replies = [_reply(blob=_raw(d), n=3 + i % 5) for i, d in enumerate(deltas)]
    with caplog.at_level(logging.WARNING, logger="fedadapt.server"):
        s, mixed = _mean(replies)
    assert s.clients == n - len(BAD) and dict(s.rejected) == {"non-finite": len(BAD)}
    named = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(named) == len(BAD)
    assert all("x.adapter_up.weight: holds NaN or Inf" in m for m in named)

    good = [_reply(blob=_raw(d), n=3 + i % 5) for i, d in enumerate(deltas) if i not in BAD]
    _, clean = _mean(good)
    for k in GLOBAL:
        assert torch.isfinite(mixed[k]).all()
        torch.testing.assert_close(mixed[k], clean[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("where", [0, 3])
def test_block_fold_names_the_bad_pending_reply_on_flush(where):
    layout = Layout.of(GLOBAL, TRAINABLE)
    fold = BlockFold(layout, block=4)
    rows = [np.full(layout.size, 1.0, dtype=np.float32) for _ in range(3)]
    rows.insert(where, np.full(layout.size, np.nan, dtype=np.float32))
    bad = []
    for i, row in enumerate(rows):
        bad += fold.add(i, row, 2.0, 0.5, checked=False)  # the 4th add flushes the block
    bad += fold.flush()
    assert [(tag, e.reason) for tag, e in bad] == [(where, "non-finite")]
    assert fold.total.weight == 6.0
    np.testing.assert_array_equal(fold.total.mean(), np.ones(layout.size, dtype=np.float32))
