from pathlib import Path

import pytest

from fedadapt.adapters import BottleneckConfig, LoraConfig
from fedadapt.bench.core import cases
from fedadapt.bench.methods import METHODS, adapter_config
from fedadapt.model_setup import global_adapter_config
from fedadapt.simconfig import SimConfig

BBC = Path(__file__).resolve().parents[3] / "simulations" / "bbc-dirichlet.toml"


@pytest.mark.parametrize("method", METHODS)
def test_the_bench_times_the_adapter_the_bbc_runs_train(method):
    # bench figures sit beside bbc-dirichlet.toml's runs in the method table: same shapes
    run = global_adapter_config(SimConfig.load(BBC, method=method))
    assert adapter_config(method) == run


def test_core_keeps_its_historical_bottleneck_and_lora_shapes():
    assert adapter_config("bottleneck", core_legacy=True) == BottleneckConfig(reduction_factor=16)
    assert adapter_config("lora", core_legacy=True) == LoraConfig(r=8)
    assert adapter_config("prefix", core_legacy=True) == adapter_config("prefix")


def test_core_times_every_method_over_int8_and_the_legacy_two_everywhere():
    got = cases()
    assert {m for p, m in got if p == "int8"} == set(METHODS)
    assert {m for p, m in got if p != "int8"} == {"bottleneck", "lora"}
    assert len(got) == len(set(got)) == 6 + 2 * 2


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method 'adalora'"):
        adapter_config("adalora")
