"""The frozen base: the pre-trained encoder every device shares and never trains.

- `checkpoint`: where the weights are, their SHA-256 identity, the tokenizer;
- `bert`: a plain-torch BERT whose embeddings match sentence-transformers;
- `quantize`: weight-only int8/int4 layers whose input gradient stays exact;
- `model`: the base built from the checkpoint (`build_base`);
- `cache`: a device's memory-mapped copy of the quantized base.

`load_base` is the one way in. The submodules are imported inside it, not here, so that
`fedadapt.base.checkpoint` or `fedadapt.base.cache` can be imported without torch (a device
that only infers has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedadapt.base.model import BaseModel

__all__ = ["load_base"]


def load_base(quantization: str = "none", dropout: float | None = 0.0) -> BaseModel:
    """Load the frozen base, weight-only quantized as asked.

    Where `$FEDADAPT_BASE_CACHE` names a folder (a deployed device), a quantized base comes
    from its memory-mapped cache there (`cache.py`): no quantization work.

    Parameters
    ----------
    quantization : str (default: "none")
        `"none"`, `"int8"` (symmetric per output channel) or `"int4"` (asymmetric groups of
        32 with a clipping search).
    dropout : float | None (default: 0.0)
        The base's dropout rate; `None` keeps the checkpoint's. Only the dropout-free base
        is cached.

    Returns
    -------
    BaseModel
        The frozen encoder (no parameter requires a gradient) and what identifies it.
    """
    from fedadapt.base.cache import cache_folder, load_cached_base
    from fedadapt.base.model import build_base

    if quantization != "none" and dropout == 0.0:
        folder = cache_folder()
        if folder is not None:
            return load_cached_base(quantization, folder)
    return build_base(quantization, dropout)
