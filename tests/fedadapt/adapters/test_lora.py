import torch
import torch.nn.functional as F

from fedadapt.adapters import LoraConfig


def test_lora_equals_merged_weight(fresh_model):
    model = fresh_model()
    cfg = LoraConfig(r=4, lora_alpha=8)
    model.add_adapter("l", cfg)
    model.set_active("l")
    wrapper = model.encoder.encoder.layer[2].attention.self.value
    branch = wrapper.adapters["l"]
    torch.nn.init.normal_(branch.lora_B.weight)
    base = wrapper.base_layer
    x = torch.randn(5, 384)
    merged = base.weight + (cfg.lora_alpha / cfg.r) * branch.lora_B.weight @ branch.lora_A.weight
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), F.linear(x, merged, base.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(branch.delta_weight(), merged - base.weight)


def test_lora_r8_on_q_and_v_is_under_1_percent(fresh_model):
    model = fresh_model()
    model.add_adapter("l", LoraConfig(r=8, target_modules=["query", "value"]))
    model.train_adapter("l")
    assert model.num_trainable() / model.base.params < 0.01
    assert model.num_trainable() == 6 * 2 * (384 * 8 + 8 * 384)


def test_ffa_lora_freezes_a_and_shares_it(fresh_model):
    m1, m2 = fresh_model(), fresh_model()
    for m in (m1, m2):
        m.add_adapter("l", LoraConfig(freeze_a=True))
        m.train_adapter("l")
    trainable = {k for k, p in m1.named_parameters() if p.requires_grad}
    assert trainable and not any("lora_A" in k for k in trainable)
    a1 = m1.adapter_state("l")
    a2 = m2.adapter_state("l")
    assert all(torch.equal(a1[k], a2[k]) for k in a1 if "lora_A" in k)
    assert set(m1.adapter_state("l", trainable_only=True)) == {k for k in a1 if "lora_A" not in k}


def test_averaging_ffa_lora_is_exact_and_plain_lora_is_not():
    torch.manual_seed(0)
    a_shared = torch.randn(4, 16)
    bs = [torch.randn(16, 4) for _ in range(3)]
    mean_of_products = sum(b @ a_shared for b in bs) / 3
    assert torch.allclose((sum(bs) / 3) @ a_shared, mean_of_products, atol=1e-5)
    a_own = [torch.randn(4, 16) for _ in range(3)]
    mean_of_products = sum(b @ a for b, a in zip(bs, a_own, strict=True)) / 3
    assert not torch.allclose((sum(bs) / 3) @ (sum(a_own) / 3), mean_of_products, atol=1e-2)


def test_each_lora_layer_draws_its_own_a(fresh_model):
    model = fresh_model()
    model.add_adapter("l", LoraConfig(r=4))
    a = [v for k, v in model.adapter_state("l").items() if k.endswith("lora_A.weight")]
    assert len(a) == 12
    assert len({tuple(t.flatten()[:8].tolist()) for t in a}) == 12


def test_ffa_lora_a_is_shared_across_clients_per_layer_and_changes_with_the_seed(fresh_model):
    m1, m2, m3 = fresh_model(), fresh_model(), fresh_model()
    torch.manual_seed(123)  # the global RNG must not matter: A comes from (seed, layer name)
    m1.add_adapter("l", LoraConfig(freeze_a=True, init_seed=7))
    m2.add_adapter("l", LoraConfig(freeze_a=True, init_seed=7))
    m3.add_adapter("l", LoraConfig(freeze_a=True, init_seed=8))
    s1, s2, s3 = (m.adapter_state("l") for m in (m1, m2, m3))
    keys = [k for k in s1 if k.endswith("lora_A.weight")]
    assert all(torch.equal(s1[k], s2[k]) for k in keys)
    assert not any(torch.equal(s1[k], s3[k]) for k in keys)
