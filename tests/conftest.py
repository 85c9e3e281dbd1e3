"""Shared fixtures: the real base model and tokenizer, loaded once per session."""

from __future__ import annotations

import pytest
import torch

from fedadapt.base import load_base
from fedadapt.base.checkpoint import load_tokenizer, tokenize

SENTENCES = [
    "A three-hour cinema master class.",
    "The plot is thin and the jokes fall flat.",
    "Federated learning keeps data on the device.",
    "An uneven but often charming portrait of a family in crisis.",
]


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(64)


@pytest.fixture(scope="session")
def batch(tok):
    return tokenize(tok, SENTENCES)


@pytest.fixture(scope="session")
def base_fp32():
    return load_base("none")


@pytest.fixture(scope="session")
def base_int8():
    return load_base("int8")


@pytest.fixture(scope="session")
def base_int4():
    return load_base("int4")


@pytest.fixture
def fresh_model():
    """A new AdapterModel over its own fp32 base (adapters mutate the module tree)."""
    from fedadapt.adapters import AdapterModel

    def make(quantization: str = "none"):
        torch.manual_seed(0)
        return AdapterModel(load_base(quantization)).eval()

    return make


@pytest.fixture(autouse=True, scope="session")
def flower_task_identity():
    """Flower stamps messages with the current run and task; a test builds them outside one."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
