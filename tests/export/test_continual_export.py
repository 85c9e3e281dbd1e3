"""One graph for the tasks of a continual-learning run: tasks with 2 and 3 labels are stacked
(their heads padded to the widest), and each task's runtime logits and labels are its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedadapt.adapter_files import save_adapter
from fedadapt.adapters import AdapterModel, BottleneckConfig
from fedadapt.base import load_base
from fedadapt.base.checkpoint import load_tokenizer, tokenize
from fedadapt.clients.runtime import EdgeRuntime
from fedadapt.export.exporter import ExportOptions, export

TEXTS = ["A warm, funny film.", "Shares fell on the stock market.", "The striker scored."]
LABELS = (["negative", "positive"], ["business", "sport", "politics"])


def _task(folder, labels: list[str], seed: int) -> AdapterModel:
    torch.manual_seed(seed)
    m = AdapterModel(load_base("none"))
    m.add_adapter("t", BottleneckConfig(), num_labels=len(labels))
    with torch.no_grad():
        for p in m.adapter_parameters("t").values():
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(m, "t", folder, extra={"label_names": labels})
    m.set_active("t")
    return m.eval()


@pytest.mark.slow  # one ONNX export of the base: tens of seconds on a busy CPU
def test_tasks_of_different_label_counts_share_one_graph(tmp_path):
    models = [_task(tmp_path / f"t{i}", LABELS[i], seed=20 + i) for i in range(2)]
    opts = ExportOptions(quantize="none", measure=False)
    export([tmp_path / "t0", tmp_path / "t1"], tmp_path / "dev", opts)
    rt = EdgeRuntime(tmp_path / "dev")
    ids, mask = tokenize(load_tokenizer(128), TEXTS)
    for task, m in enumerate(models):
        with torch.no_grad():
            want = m(ids, mask).numpy()
        got = rt.logits(TEXTS, task=task)
        n = len(LABELS[task])
        assert np.abs(got[:, :n] - want).max() < 1e-4
        assert (got[:, n:] < -1e3).all()  # the padding never wins
        preds = rt.predict(TEXTS, task=task)
        assert [p.label for p in preds] == [LABELS[task][i] for i in want.argmax(1)]
        assert list(preds[0].scores) == LABELS[task]
