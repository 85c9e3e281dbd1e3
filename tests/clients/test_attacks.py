import pytest
import torch

from fedadapt.clients.attacks import INFLATED_EXAMPLES, attack, claimed_examples, malicious_clients


def test_malicious_set_is_seeded_and_sized():
    assert malicious_clients(20, 0.2, 0) == malicious_clients(20, 0.2, 0)
    assert len(malicious_clients(20, 0.2, 0)) == 4
    assert malicious_clients(20, 0.0, 0) == frozenset()


def test_attacks():
    d = {"a": torch.tensor([3.0, 4.0])}
    torch.testing.assert_close(attack(d, "sign-flip", 0)["a"], torch.tensor([-30.0, -40.0]))
    noise = attack(d, "noise", 0)["a"]
    assert abs(noise.norm().item() - 5.0) < 1e-4


def test_inflate_examples_flips_the_delta_and_claims_a_billion():
    d = {"a": torch.tensor([3.0, 4.0])}
    torch.testing.assert_close(attack(d, "inflate-examples", 0)["a"], torch.tensor([-3.0, -4.0]))
    assert claimed_examples("inflate-examples", 37) == INFLATED_EXAMPLES == 10**9
    assert claimed_examples("sign-flip", 37) == 37
    assert claimed_examples("noise", 37) == 37


def test_an_unknown_attack_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown attack 'bogus'; choose from"):
        attack({"a": torch.zeros(1)}, "bogus", 0)
