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


def test_the_scale_huge_and_claim_cap_attacks():
    import torch

    from fedadapt.clients.attacks import attack, claimed_examples

    delta = {"w": torch.tensor([0.5, -1.0])}
    assert torch.equal(attack(delta, "scale", 0)["w"], torch.tensor([5e5, -1e6]))
    huge = attack(delta, "huge", 0)["w"]
    assert torch.isfinite(huge).all() and float(huge.min()) == float(torch.tensor(1e36))
    assert torch.equal(attack(delta, "claim-cap", 0)["w"], -delta["w"])
    assert claimed_examples("claim-cap", 25, cap=1000) == 1000
    assert claimed_examples("scale", 25, cap=1000) == 25
