import torch

from fedadapt.clients.attacks import attack, malicious_clients


def test_malicious_set_is_seeded_and_sized():
    assert malicious_clients(20, 0.2, 0) == malicious_clients(20, 0.2, 0)
    assert len(malicious_clients(20, 0.2, 0)) == 4
    assert malicious_clients(20, 0.0, 0) == frozenset()


def test_attacks():
    d = {"a": torch.tensor([3.0, 4.0])}
    torch.testing.assert_close(attack(d, "sign-flip", 0)["a"], torch.tensor([-30.0, -40.0]))
    noise = attack(d, "noise", 0)["a"]
    assert abs(noise.norm().item() - 5.0) < 1e-4
