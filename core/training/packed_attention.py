"""sdpa for packed rows, one example at a time.

A packed row holds several examples whose ``position_ids`` restart at 0. Under a 4-D
block-diagonal mask sdpa computes the whole row's attention and cannot take its causal
fast path; computing each example on its own with ``is_causal`` gives the same numbers
(``tests/test_packing.py``) for the sum of the squares of the example lengths instead of
the square of the row's, without a mask in memory. Measured on CPU (``benchmarks/``): a
training step on rows of 1,024 tokens 1.1-1.15x faster than under the mask. On CUDA the 4-D
mask stays (the loop launches one kernel per example and is unmeasured there) and
flash-attn's varlen path needs neither.

Registered with transformers as the attention implementation :data:`NAME`: it is sdpa for
everything that is not a packed training row (a padding mask, a KV cache, decoding), so a
model switched to it still evaluates and generates as with sdpa.
"""

from __future__ import annotations

import weakref
from typing import Any

NAME = "airo_packed_sdpa"

_last: tuple[Any, list[list[int]]] | None = None  # (weakref to position_ids, bounds): one forward's layers share it


def example_bounds(position_ids, rows: int) -> list[list[int]]:
    """Per row, where each example starts (``position_ids`` do not follow on by one) and the
    row's end: ``[[0, 17, 26, 40], ...]``. Computed once per forward, not once per layer."""
    global _last
    if _last is not None and _last[0]() is position_ids:
        return _last[1]
    import torch

    pos = position_ids.expand(rows, -1) if position_ids.shape[0] != rows else position_ids
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    width = pos.shape[1]
    bounds: list[list[int]] = [[] for _ in range(rows)]
    for r, c in starts.nonzero().tolist():
        bounds[r].append(c)
    for row in bounds:
        row.append(width)
    _last = (weakref.ref(position_ids), bounds)
    return bounds


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, position_ids=None, **kwargs):
    """transformers' attention signature: (batch, heads, length, head_dim) in,
    ((batch, length, heads, head_dim), None) out."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    packed_row = (attention_mask is None and position_ids is not None and query.shape[2] > 1
                  and key.shape[2] == query.shape[2] and getattr(module, "is_causal", True)
                  and kwargs.get("position_bias") is None)
    if not packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows = []
    for r, bounds in enumerate(example_bounds(position_ids, query.shape[0])):
        pieces = [F.scaled_dot_product_attention(query[r:r + 1, :, a:b], key[r:r + 1, :, a:b], value[r:r + 1, :, a:b],
                                                 dropout_p=dropout, scale=scaling, is_causal=True)
                  for a, b in zip(bounds, bounds[1:])]
        rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask where there is no padding mask: the attention finds the examples itself."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def supports(config) -> bool:
    """Whether every layer of this model is plain causal attention (no sliding window, no
    softcapping): the only attention this function computes per example."""
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return False
    return not getattr(config, "attn_logit_softcapping", None)


def use_packed_attention(model, device) -> bool:
    """Switch ``model`` (an sdpa model that :func:`supports`, to train on ``device``, a CPU) to
    :data:`NAME`; False (and nothing changed) otherwise."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME) or not supports(config):
        return False
    if getattr(device, "type", device) != "cpu":
        return False
    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, _mask)
    config._attn_implementation = NAME
    return True
