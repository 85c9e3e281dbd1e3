"""The model every party builds: where the personal adapter lands, and the label set."""

import re

import pytest

from fedadapt.errors import ConfigError
from fedadapt.model_setup import GLOBAL, PERSONAL, build_model, label_names, num_labels
from fedadapt.simconfig import SimConfig


def _layers(state) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}


@pytest.mark.parametrize(("n", "layers"), [(2, {4, 5}), (1, {5}), (6, {0, 1, 2, 3, 4, 5})])
def test_the_personal_adapter_sits_in_the_top_personal_layers_only(n, layers):
    model = build_model(SimConfig(personal_layers=n))
    assert _layers(model.adapter_state(PERSONAL)) == layers
    assert _layers(model.adapter_state(GLOBAL)) == set(range(6))  # the global one: every layer


def test_personal_layers_beyond_the_encoder_are_refused():
    with pytest.raises(ConfigError, match="personal_layers must be between 1 and 6, got 7"):
        build_model(SimConfig(personal_layers=7))


def test_label_names_are_the_runs_label_set():
    assert label_names("rotten_tomatoes") == ["rotten", "fresh"]
    assert num_labels(SimConfig(dataset="bbc")) == 5
    with pytest.raises(ConfigError, match="unknown dataset 'imdb'"):
        label_names("imdb")
