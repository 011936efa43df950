"""QLoRA's 4-bit layout, shared by the built-in plugins that need it (the ``qlora`` loader
records it, ``merge`` and ``generate`` reproduce it). A library module, not a plugin: it
registers nothing. bitsandbytes is imported inside the functions.
"""

from __future__ import annotations

from typing import Any


def quantized_layout(model) -> dict[str, Any]:
    """Names (in the base model) of the 4-bit layers, and how they were quantized."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover
        return {}
    names, blocksize, storage_dtype = [], None, None
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            clean = name
            for prefix in ("base_model.model.",):
                if clean.startswith(prefix):
                    clean = clean[len(prefix):]
            if clean.endswith(".base_layer"):
                clean = clean[: -len(".base_layer")]
            names.append(clean)
            qs = getattr(module.weight, "quant_state", None)
            if qs is not None and blocksize is None:
                blocksize = qs.blocksize
                storage_dtype = str(qs.dtype).replace("torch.", "")
    return {"quantized_modules": names, "quant_blocksize": blocksize, "quant_input_dtype": storage_dtype}


def dequantize_like_training(model, *, quant_type: str = "nf4", double_quant: bool = True,
                             modules: list[str] | None = None, blocksize: int | None = None,
                             input_dtype=None) -> int:
    """Replace each base Linear weight by its 4-bit round trip (quantize, dequantize).

    The adapter of a QLoRA run learned corrections to the *quantized* base; merging it into
    the round-tripped weights gives the model the adapter was trained against. ``modules``
    are the layer names that were 4-bit in training (recorded by the save action); without
    them, every Linear but the LM head. Returns the number of layers changed.
    """
    import torch
    from bitsandbytes import functional as bnbf

    wanted = set(modules) if modules else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if wanted is not None:
            if name not in wanted:
                continue
        elif module is output or name.split(".")[-1] == "lm_head":
            continue
        weight = module.weight.data
        source = weight.to(device=device, dtype=input_dtype or weight.dtype)
        packed, state = bnbf.quantize_4bit(source, blocksize=blocksize, compress_statistics=double_quant,
                                           quant_type=quant_type)
        restored = bnbf.dequantize_4bit(packed, state)
        module.weight.data = restored.to(device=weight.device, dtype=weight.dtype)
        count += 1
    return count
