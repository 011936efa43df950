"""Loading an airo output folder for generation: a LoRA/QLoRA adapter on its base (from
``airo_training.json`` or the adapter config, QLoRA bases through the 4-bit round trip of
training), a merged model or a full fine-tune, with the tokenizer whose ``chat_template``
the save action checked. A library module of the ``inference`` plugin, not a plugin itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airo.core import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TRAINING_INFO = "airo_training.json"
DTYPES = ("float32", "bfloat16", "float16")


# -- loading ---------------------------------------------------------------------------------

def folder_kind(folder: str | Path) -> str:
    """``"adapter"`` or ``"model"``; a ConfigError naming the folder for anything else."""
    path = Path(folder)
    if not path.exists():
        raise ConfigError(f"{folder}: no such folder; pass the --output_dir of `airo train` "
                          "(an adapter or model folder)")
    if not path.is_dir():
        raise ConfigError(f"{folder} is a file; pass the folder `airo train` or `airo merge` wrote")
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (path / MODEL_CONFIG).is_file():
        return "model"
    raise ConfigError(f"{folder} holds neither a LoRA adapter ({ADAPTER_CONFIG}) nor a model ({MODEL_CONFIG}); "
                      "pass the --output_dir of `airo train` or the --out of `airo merge`")


def _training_info(folder: Path) -> dict[str, Any]:
    path = folder / TRAINING_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix or delete it and pass --base") from None
    return info if isinstance(info, dict) else {}


def _load_tokenizer(source: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {source}: {_first_line(exc)}") from None
    if not tokenizer.chat_template:
        raise ConfigError(f"{source}: the tokenizer has no chat_template; airo saves one with every model it "
                          "trains or merges; add one (chat_template.jinja) or pass a folder airo wrote")
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_dtype(dtype: str | None, cuda: bool):
    import torch

    if dtype is None:
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def load_for_inference(folder: str | Path, base: str | None = None, dtype: str | None = None, *,
                       load_in_4bit: bool = False, trust_remote_code: bool = False):
    """Load an airo output folder for generation: ``(model, tokenizer, description)``.

    ``base`` overrides the base model of an adapter. ``dtype``: float32, bfloat16 or
    float16 (default float32 on CPU, bfloat16 on CUDA). A QLoRA adapter's base is loaded
    in that dtype with its weights put through the 4-bit round trip the adapter was trained
    against, unless ``load_in_4bit`` (CUDA only) quantizes it with bitsandbytes for real.
    """
    folder = Path(folder)
    kind = folder_kind(folder)
    if base is not None and kind != "adapter":
        raise ConfigError(f"--base applies to LoRA adapter folders; {folder} holds a full model")

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would interleave with the chat
    cuda = torch.cuda.is_available()
    if load_in_4bit and not cuda:
        raise ConfigError("--load_in_4bit needs a CUDA GPU; without it the model is loaded in 16/32-bit")
    torch_dtype = _torch_dtype(dtype, cuda)
    info = _training_info(folder) if kind == "adapter" else {}
    notes: list[str] = []

    if kind == "adapter":
        from peft import PeftConfig

        source = "--base"
        if base is None:
            base, source = info.get("base_model"), f"{folder / TRAINING_INFO}"
        if not base:
            base, source = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path, f"{folder / ADAPTER_CONFIG}"
        if not base:
            raise ConfigError(f"{folder}: the adapter does not say which base model it belongs to; pass --base")
        if Path(base).is_absolute() and not Path(base).is_dir():
            raise ConfigError(f"the base model {base} (named by {source}) does not exist; pass --base")
        tokenizer_source = str(folder) if (folder / "tokenizer_config.json").is_file() else str(base)
    else:
        tokenizer_source = str(folder)
    tokenizer = _load_tokenizer(tokenizer_source, trust_remote_code)

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        double_quant = info.get("double_quant")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_quant_type=info.get("quant_type") or "nf4",
            bnb_4bit_use_double_quant=True if double_quant is None else bool(double_quant))
    if cuda:
        kwargs["device_map"] = {"": 0}  # straight onto the GPU (the QLoRA round trip runs there too)
    weights = base if kind == "adapter" else str(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
    except (OSError, ValueError) as exc:
        what = f"the base model {weights}" if kind == "adapter" else str(weights)
        hint = "; pass --base" if kind == "adapter" else ""
        raise ConfigError(f"cannot load {what}: {_first_line(exc)}{hint}") from None

    if kind == "adapter":
        model = _apply_adapter(model, tokenizer, folder, info, load_in_4bit, notes)
    model.eval()
    device = "cuda" if cuda else "cpu"
    what = f"LoRA adapter {folder} on {base}" if kind == "adapter" else f"model {folder}"
    description = f"{what} ({str(torch_dtype).replace('torch.', '')}{', 4-bit' if load_in_4bit else ''} on {device})"
    return model, tokenizer, "; ".join([description] + notes)


def _apply_adapter(model, tokenizer, folder: Path, info: dict[str, Any], load_in_4bit: bool, notes: list[str]):
    import warnings

    from peft import PeftModel

    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        # training added tokens (e.g. --pad_token): the adapter carries the grown embeddings
        model.resize_token_embeddings(len(tokenizer))
    if info.get("bits") == 4 and not load_in_4bit:
        # The adapter learned corrections to the quantized base; the same round trip the
        # merge uses gives the weights it was trained against, without 4-bit kernels.
        import torch

        from airo.plugins.quantization import dequantize_like_training

        quant_type = info.get("quant_type") or "nf4"
        double_quant = info.get("double_quant")
        input_dtype = info.get("quant_input_dtype")
        count = dequantize_like_training(
            model, quant_type=quant_type, double_quant=True if double_quant is None else bool(double_quant),
            modules=info.get("quantized_modules"), blocksize=info.get("quant_blocksize"),
            input_dtype=getattr(torch, input_dtype) if input_dtype else None)
        notes.append(f"QLoRA: {count} base layers through the 4-bit {quant_type} round trip of training")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return PeftModel.from_pretrained(model, str(folder))
