"""Weight-only quantization of the frozen base: int8 per output channel, int4 group-wise.

Why not `torch.ao` dynamic quantized `Linear`: it passes no gradient to its input, so every
adapter below the top one would train on a wrong (zero) gradient. Here the weights stay
quantized in memory and are dequantized inside an autograd Function that returns the exact
input gradient `grad_out @ W_deq` and keeps no fp32 weight copy alive between forward and
backward.

Why no integer GEMM: `torch._int_mm` (VNNI) with activations and gradients quantized per row
was tried. The GEMMs ran 4x faster, but the quantize/dequantize passes ate the gain at these
shapes (a training step took the same time), and the gradient at the lowest adapter fell
to cosine 0.985 against fp32 (weight-only: 0.997). Exact gradients won.

torch's weight-only int8 kernel (`aten._weight_int8pack_mm`: fp32 activations times int8
rows times per-row scales, no dequantized copy) is here too, as kernel "pack", for the
forward and the input gradient `(grad * scale) @ W_int8`. It is exact (same products, fp32
sums) but built for decoding (a few rows): at a training step's 768 rows it ran 10-20x
slower than dequantize + fp32 GEMM on this CPU (`python -m fedadapt.bench.int8_step`), so
"dequant" stays the default.

int4 is asymmetric (scale and offset per group of 32) with the clipping range picked per
group to minimise squared error: on MiniLM this raised the gradient's cosine against fp32
from 0.81 (symmetric absmax) to 0.92.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("none", "int8", "int4")
INT4_GROUP = 32
INT8_KERNELS = ("dequant", "pack")
_kernel = {"int8": "dequant"}


@contextlib.contextmanager
def int8_kernel(name: str) -> Iterator[None]:
    """Within the block, int8 Linears compute with kernel `name` (one of INT8_KERNELS)."""
    if name not in INT8_KERNELS:
        raise ValueError(f"unknown int8 kernel {name!r}; one of {', '.join(INT8_KERNELS)}")
    before, _kernel["int8"] = _kernel["int8"], name
    try:
        yield
    finally:
        _kernel["int8"] = before


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (output channel): `w ≈ q * scale[:, None]`."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weight back from `quantize_int8`'s `(q, scale)`: `q * scale[:, None]`."""
    return q.float() * scale[:, None]


def quantize_int4(
    w: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 in groups of `group` along each row, two values packed per byte.

    `w ≈ q * scale + offset` per group, `q` in 0..15; each group's range is shrunk by the
    factor (1.0 down to 0.7) that gives the least squared error, since a few outliers
    otherwise waste most of the 16 levels. Returns `(packed uint8 [rows, cols/2],
    scale fp16 [rows, cols/group], offset fp16 [rows, cols/group])`.
    """
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"int4 needs columns divisible by the group size {group}, got {cols}")
    g = w.float().reshape(rows, cols // group, group)
    lo0, hi0 = g.amin(dim=2, keepdim=True), g.amax(dim=2, keepdim=True)
    best_q = best_s = best_o = best_err = None
    for ratio in torch.linspace(1.0, 0.7, 7).tolist():
        lo, hi = lo0 * ratio, hi0 * ratio
        scale = ((hi - lo) / 15.0).clamp(min=1e-8).half().float()
        offset = lo.half().float()
        q = torch.round((g - offset) / scale).clamp(0, 15)
        err = ((q * scale + offset - g) ** 2).sum(dim=2, keepdim=True)
        if best_err is None:
            best_q, best_s, best_o, best_err = q, scale, offset, err
        else:
            better = err < best_err
            best_q = torch.where(better, q, best_q)
            best_s = torch.where(better, scale, best_s)
            best_o = torch.where(better, offset, best_o)
            best_err = torch.minimum(err, best_err)
    u = best_q.to(torch.uint8).reshape(rows, cols)
    packed = u[:, 0::2] | (u[:, 1::2] << 4)
    return packed, best_s.squeeze(2).half(), best_o.squeeze(2).half()


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int = INT4_GROUP
) -> torch.Tensor:
    """The fp32 weight `[rows, cols]` back from `quantize_int4`'s output.

    `group` must be the one the weight was quantized with.
    """
    rows = packed.shape[0]
    q = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(rows, -1, group).float()
    return (q * scale.float()[..., None] + offset.float()[..., None]).reshape(rows, -1)


class QuantizedWeight(nn.Module):
    """A frozen 2-D weight held as int8 rows or packed int4 groups, plus its scales."""

    def __init__(self, w: torch.Tensor, bits: int) -> None:
        super().__init__()
        if bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        self.bits = bits
        self.shape = tuple(w.shape)
        w = w.detach().float()
        if bits == 8:
            q, scale = quantize_int8(w)
            offset = None
        else:
            q, scale, offset = quantize_int4(w)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The fp32 weight, or only the given rows of it (an embedding lookup)."""
        if self.bits == 8:
            q, s = (self.q, self.scale) if rows is None else (self.q[rows], self.scale[rows])
            return q.float() * s[..., None]
        if rows is None:
            return dequantize_int4(self.q, self.scale, self.offset)
        flat = rows.reshape(-1)
        w = dequantize_int4(self.q[flat], self.scale[flat], self.offset[flat])
        return w.reshape(*rows.shape, self.shape[1])


def _pack_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x @ (q * scale[:, None]).T` over the last dim of `x`, by torch's int8 kernel."""
    rows = x.reshape(-1, x.shape[-1]).float().contiguous()
    out = torch.ops.aten._weight_int8pack_mm(rows, q, scale)
    return out.reshape(*x.shape[:-1], q.shape[0])


class _DequantLinear(torch.autograd.Function):
    """`x @ W_deq.T + b`, recomputing `W_deq` in backward instead of storing it."""

    @staticmethod
    def forward(ctx, x, qweight: QuantizedWeight, bias):  # type: ignore[override]
        ctx.qweight = qweight
        ctx.pack = qweight.bits == 8 and _kernel["int8"] == "pack"
        if not ctx.pack:
            return F.linear(x, qweight.dequantize(), bias)
        y = _pack_mm(x, qweight.q, qweight.scale)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        w = ctx.qweight
        if not ctx.pack:
            return grad_out @ w.dequantize(), None, None
        # grad @ (q * s[:, None]) = (grad * s) @ q: q.T's rows with unit scales
        ones = torch.ones(w.shape[1], dtype=torch.float32)
        return _pack_mm(grad_out * w.scale, w.q.t().contiguous(), ones), None, None


class QuantLinear(nn.Module):
    """A frozen `nn.Linear` whose weight lives quantized; the gradient still reaches `x`."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qweight = QuantizedWeight(linear.weight, bits)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for LoRA merges and exporters."""
        return self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T + b`; only `x` gets a gradient (exact), weight and bias stay frozen."""
        return _DequantLinear.apply(x, self.qweight, self.bias)

    def extra_repr(self) -> str:
        """Shape and bit width, for `print(model)`."""
        return f"in={self.in_features}, out={self.out_features}, bits={self.qweight.bits}"


class QuantEmbedding(nn.Module):
    """A frozen `nn.Embedding` that dequantizes only the rows it looks up."""

    def __init__(self, emb: nn.Embedding, bits: int) -> None:
        super().__init__()
        if bits == 4 and emb.embedding_dim % INT4_GROUP:
            bits = 8  # tiny tables (token types) whose width does not fit the group
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.qweight = QuantizedWeight(emb.weight, bits)

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized table (each access dequantizes it again)."""
        return self.qweight.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows for `ids`, shape `[*ids.shape, embedding_dim]`; no gradient."""
        return self.qweight.dequantize(ids)


def quantize_(model: nn.Module, mode: str) -> nn.Module:
    """Replace every `nn.Linear` and `nn.Embedding` of `model` in place; LayerNorms stay fp32."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantization {mode!r}")
    bits = 8 if mode == "int8" else 4
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, QuantLinear(child, bits))
            elif isinstance(child, nn.Embedding):
                setattr(module, child_name, QuantEmbedding(child, bits))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: what the weights occupy in memory."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
