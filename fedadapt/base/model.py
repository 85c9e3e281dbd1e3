"""The frozen base encoder: the checkpoint in a plain-torch BERT, weight-only quantized.

`build_base` always builds from the checkpoint; `fedadapt.base.load_base` is what callers
use, since it takes a device's memory-mapped cache when there is one (`cache.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from safetensors.torch import load_file

from fedadapt.base.bert import Bert, BertConfig
from fedadapt.base.checkpoint import BASE_MODEL_NAME, base_sha256, model_dir
from fedadapt.base.quantize import QUANTIZATIONS, quantize_, weight_bytes


@dataclass
class BaseModel:
    """A frozen encoder plus what identifies and describes it."""

    encoder: Bert
    sha256: str
    quantization: str
    params: int
    bytes_fp32: int

    @property
    def bytes_in_memory(self) -> int:
        """Bytes the encoder's tensors occupy now, quantized or not.

        Adapters injected into the encoder (`AdapterModel` does so in place) count too.
        """
        return weight_bytes(self.encoder)

    def describe(self) -> dict:
        """Name, hash, size and quantization of the base: what a run's report says of it."""
        return {
            "name": BASE_MODEL_NAME,
            "sha256": self.sha256,
            "params": self.params,
            "bytes_fp32": self.bytes_fp32,
            "bytes_quantized": self.bytes_in_memory,
            "quantization": self.quantization,
        }


def build_base(quantization: str = "none", dropout: float | None = 0.0) -> BaseModel:
    """Build the frozen base from the checkpoint, weight-only quantized as asked.

    The frozen base runs without dropout by default: it is never trained, dropout there only
    adds noise, and it costs ~30% of a CPU training step (SDPA leaves its fused kernel).
    Adapters keep their own dropout. `dropout=None` keeps the checkpoint's rates.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS}")
    d = model_dir()
    cfg = BertConfig.from_json(d / "config.json")
    if dropout is not None:
        cfg = BertConfig(
            **{
                **cfg.__dict__,
                "hidden_dropout_prob": dropout,
                "attention_probs_dropout_prob": dropout,
            }
        )
    model = Bert(cfg)
    state = load_file(d / "model.safetensors")
    state.pop("embeddings.position_ids", None)
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    params = sum(p.numel() for p in model.parameters())
    bytes_fp32 = sum(p.numel() * 4 for p in model.parameters())
    model.requires_grad_(False)
    if quantization != "none":
        quantize_(model, quantization)
    return BaseModel(model, base_sha256(), quantization, params, bytes_fp32)
