import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedadapt.adapter_files import CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from fedadapt.adapters import BottleneckConfig, IA3Config, LoraConfig, PrefixConfig, PromptConfig
from fedadapt.errors import AdapterLoadError

PEFT_HEAD = "base_model.model.classifier."


def _trained(model, name, cfg, labels=2):
    model.add_adapter(name, cfg, num_labels=labels)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(
    "cfg",
    [
        BottleneckConfig(placement="houlsby"),
        LoraConfig(r=4),
        IA3Config(),
        PrefixConfig(num_virtual_tokens=3),
        PromptConfig(num_virtual_tokens=3),
    ],
    ids=["bottleneck", "lora", "ia3", "prefix", "prompt"],
)
def test_round_trip_reproduces_outputs(fresh_model, batch, tmp_path, cfg):
    src = _trained(fresh_model(), "a", cfg)
    src.set_active("a")
    save_adapter(src, "a", tmp_path / "a", version=3)
    dst = fresh_model()
    name = load_adapter(dst, tmp_path / "a")
    dst.set_active(name)
    with torch.no_grad():
        torch.testing.assert_close(dst(*batch), src(*batch), atol=0, rtol=0)
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["version"] == 3 and meta["base_model_sha256"] == src.base.sha256


def test_files_hold_no_base_weights(fresh_model, tmp_path):
    model = _trained(fresh_model(), "a", LoraConfig())
    save_adapter(model, "a", tmp_path / "a")
    tensors = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert all(("lora_" in k) or k.startswith(PEFT_HEAD) for k in tensors)
    assert sum(t.numel() for t in tensors.values()) < 0.01 * model.base.params


def test_lora_and_ia3_configs_carry_peft_fields(fresh_model, tmp_path):
    model = _trained(fresh_model(), "l", LoraConfig(r=4, lora_alpha=8))
    model = _trained(model, "i", IA3Config())
    save_adapter(model, "l", tmp_path / "l")
    save_adapter(model, "i", tmp_path / "i")
    lora = json.loads((tmp_path / "l" / CONFIG_FILE).read_text())
    ia3 = json.loads((tmp_path / "i" / CONFIG_FILE).read_text())
    assert (lora["peft_type"], lora["r"], lora["lora_alpha"]) == ("LORA", 4, 8)
    assert lora["target_modules"] == ["query", "value"]
    assert ia3["peft_type"] == "IA3" and ia3["feedforward_modules"] == ["output.dense"]


def test_other_base_is_refused(fresh_model, tmp_path):
    save_adapter(_trained(fresh_model(), "a", LoraConfig()), "a", tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    cfg["base_model_sha256"] = "0" * 64
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(cfg))
    model = fresh_model()
    with pytest.raises(AdapterLoadError, match="trained on base 000000000000"):
        load_adapter(model, tmp_path / "a")
    assert not model.configs


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_tensor_mismatch_is_named_and_leaves_model_clean(fresh_model, tmp_path, damage):
    save_adapter(_trained(fresh_model(), "a", LoraConfig()), "a", tmp_path / "a")
    path = tmp_path / "a" / WEIGHTS_FILE
    tensors = load_file(path)
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight"
    if damage == "missing":
        del tensors[key]
    elif damage == "extra":
        tensors[key.replace("query", "key")] = tensors[key].clone()
    else:
        tensors[key] = torch.zeros(384, 5)
    save_file(tensors, path)
    cfg = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    cfg.pop("tensors_sha256")  # a hand-edited folder: the tensor checks must still catch it
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(cfg))
    model = fresh_model()
    match = {"missing": "missing tensors", "extra": "unexpected tensors", "shape": "mis-shaped"}
    with pytest.raises(AdapterLoadError, match=match[damage]):
        load_adapter(model, tmp_path / "a")
    assert not model.configs and not model.heads


def test_torn_folder_is_detected(fresh_model, tmp_path):
    save_adapter(_trained(fresh_model(), "a", LoraConfig()), "a", tmp_path / "a")
    data = (tmp_path / "a" / WEIGHTS_FILE).read_bytes()
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(AdapterLoadError, match="does not match its config"):
        load_adapter(fresh_model(), tmp_path / "a")


def test_not_an_adapter_folder(fresh_model, tmp_path):
    with pytest.raises(AdapterLoadError, match="not an adapter folder"):
        load_adapter(fresh_model(), tmp_path)


def test_lora_and_ia3_are_written_under_peft_names_with_the_head_as_classifier(
    fresh_model, tmp_path
):
    model = _trained(fresh_model(), "a", IA3Config(), labels=3)
    save_adapter(model, "a", tmp_path / "a")
    tensors = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert tensors[PEFT_HEAD + "weight"].shape == (3, 384)
    assert "base_model.model.encoder.layer.0.attention.self.key.ia3_l" in tensors
    assert not any(k.startswith("head.") or k.startswith("encoder.") for k in tensors)
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["modules_to_save"] == [
        "classifier"
    ]


def test_an_older_fedadapt_folder_with_bare_names_still_loads(fresh_model, batch, tmp_path):
    src = _trained(fresh_model(), "a", LoraConfig(r=4))
    src.set_active("a")
    save_adapter(src, "a", tmp_path / "a")
    path = tmp_path / "a" / WEIGHTS_FILE
    old = {k.removeprefix("base_model.model."): v for k, v in load_file(path).items()}
    old = {
        ("head." + k[len("classifier.") :] if k.startswith("classifier.") else k): v
        for k, v in old.items()
    }
    save_file(old, path)
    cfg = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    cfg.pop("tensors_sha256")
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(cfg))
    dst = fresh_model()
    dst.set_active(load_adapter(dst, tmp_path / "a"))
    with torch.no_grad():
        torch.testing.assert_close(dst(*batch), src(*batch), atol=0, rtol=0)


def test_reparametrized_prefix_is_saved_folded_and_the_live_model_keeps_training(
    fresh_model, batch, tmp_path
):
    src = _trained(fresh_model(), "a", PrefixConfig(num_virtual_tokens=2, reparam_hidden=8))
    src.set_active("a")
    save_adapter(src, "a", tmp_path / "a")
    saved = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert not any("reparam" in k or "prefix_embedding" in k for k in saved)
    assert saved["encoder.layer.0.attention.self.prefix_keys"].shape == (2, 384)
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["config"]["reparam_hidden"] == 0
    assert src.configs["a"].reparam_hidden == 8
    dst = fresh_model()
    dst.set_active(load_adapter(dst, tmp_path / "a"))
    with torch.no_grad():
        torch.testing.assert_close(dst(*batch), src(*batch), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"use_dora": True}, r"PEFT options fedadapt does not run: \['use_dora'\]"),
        ({"modules_to_save": ["pooler"]}, r"modules_to_save \['pooler'\]"),
        ({"peft_type": "LOHA"}, "PEFT type 'LOHA'; fedadapt reads PEFT's LORA and IA3"),
        ({"r": "eight"}, "bad lora config"),
    ],
)
def test_a_peft_folder_with_options_fedadapt_lacks_is_refused(fresh_model, tmp_path, edit, message):
    save_adapter(_trained(fresh_model(), "a", LoraConfig(r=4)), "a", tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    peft_only = {k: v for k, v in cfg.items() if k not in ("method", "config", "base_model_sha256")}
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps({**peft_only, **edit}))
    model = fresh_model()
    with pytest.raises(AdapterLoadError, match=message):
        load_adapter(model, tmp_path / "a")
    assert not model.configs
