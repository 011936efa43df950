"""Built-in model loaders: ``qlora`` (LoRA on a 4/8-bit bitsandbytes or 16/32-bit base) and
``full`` (every weight trained: bf16 with --bf16, else fp32), with their options (sections
``qlora`` and ``full``: the seed's flags ``--bits``, ``--lora_r``, ``--full_finetune``, ...).

A loader is ``load(config: TrainConfig) -> LoadedModel``. Heavy imports (torch,
transformers, peft, bitsandbytes) stay inside functions so ``airo --help`` stays fast.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from airo.core import ConfigError, LoadedModel, ModelOutput, hookimpl
from airo.plugins.quantization import quantized_layout

FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


# -- options -------------------------------------------------------------------------------------

def _opt(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class QLoraOptions:
    # the values each option accepts are declared with it (min, max, choices...): airo checks
    # them before anything loads and names the flag or YAML line in the error
    bits: int = _opt(4, "Base weight precision: 4 or 8 (bitsandbytes), 16 or 32.", choices=[4, 8, 16, 32])
    double_quant: bool = _opt(True, "Quantize the 4-bit quantization constants too (QLoRA).")
    quant_type: str = _opt("nf4", "4-bit data type: nf4 or fp4.", choices=["nf4", "fp4"])
    lora_r: int = _opt(64, "LoRA rank.", min=1, max=65536)
    lora_alpha: float = _opt(16, "LoRA alpha.", above=0, max=65536)
    lora_dropout: float = _opt(0.0, "LoRA dropout.", min=0, below=1)
    lora_modules: str = _opt("all", "`all` (every linear layer but lm_head) or a comma list of module names.")


@dataclass
class FullOptions:
    full_finetune: bool = _opt(False, "Train every weight instead of a LoRA adapter (the `full` loader).")

    def validate(self, config) -> None:
        qlora = config.section("qlora")
        if self.full_finetune and qlora.bits in (4, 8):
            if "bits" in config.explicit:
                raise ValueError("--full_finetune needs --bits 16 or 32 (quantized weights cannot be trained directly)")
            qlora.bits = 16  # the 4-bit default belongs to QLoRA; a full fine-tune trains 16-bit weights


@hookimpl
def register_options(register):
    register("qlora", QLoraOptions, description="quantized base and LoRA adapter (the qlora loader)")
    register("full", FullOptions, description="full fine-tuning (the full loader)")


# -- shared helpers (also used by the training run and the tests) -----------------------------

def compute_dtype(config):
    """bf16 with --bf16, fp16 with --fp16, else fp32 (the seed's rule)."""
    import torch

    if config.training.get("bf16"):
        return torch.bfloat16
    if config.training.get("fp16"):
        return torch.float16
    return torch.float32


def base_dtype(config):
    """The dtype the base weights are loaded in."""
    import torch

    bits = config.get("bits")
    if bits == 32:
        return torch.float32
    if bits == 16:
        return torch.float16 if config.training.get("fp16") else torch.bfloat16
    # 4/8-bit: the layers bitsandbytes does not quantize (norms, embeddings, lm_head).
    return compute_dtype(config)


def full_finetune_dtype(config):
    """The dtype a full fine-tune loads (and trains) its weights in: the seed's rule.

    bf16 only with ``--bf16`` (pure bf16 training); otherwise float32, also with ``--fp16``:
    fp16 mixed precision needs fp32 master weights (fp16 weights would be trained in fp16
    and go to NaN). ``--bits 32`` is always float32.
    """
    import torch

    if config.get("bits") != 32 and config.training.get("bf16"):
        return torch.bfloat16
    return torch.float32


def flash_attention_problem(dtype=None) -> str | None:
    """Why flash-attn cannot be used here, or None when it can."""
    import torch

    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'airo[flash]')"
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU and none is available"
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return "it needs fp16 or bf16 weights (pass --bf16 or --fp16)"
    return None


def resolve_attention(config, dtype=None) -> tuple[str, list[str]]:
    """The attention implementation to load with, and notes for the run summary.

    ``--use_flash_attention_2`` / ``--attn_implementation flash_attention_2`` get flash-attn
    only when it is importable and CUDA is available; otherwise ``sdpa`` with a message,
    never a crash deep inside transformers.
    """
    requested = config.model.attn_implementation or "sdpa"
    if requested in FLASH_ATTENTION:
        problem = flash_attention_problem(dtype)
        if problem:
            return "sdpa", [f"{requested} was requested but {problem}; using sdpa attention instead"]
    elif requested not in ("sdpa", "eager", "flex_attention") and not requested.startswith("kernels-"):
        raise ConfigError(f"--attn_implementation must be eager, sdpa or flash_attention_2, got {requested!r}")
    return requested, []


def _uses_deepspeed(config) -> bool:
    return bool(config.training.get("deepspeed"))


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear layer (torch, bitsandbytes 4-bit and 8-bit) but the LM head."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except Exception:  # noqa: BLE001 - bitsandbytes is optional for 16/32-bit runs
        pass
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, linear_types) or module is output:
            continue
        leaf = name.split(".")[-1]
        if leaf != "lm_head":
            names.add(leaf)
    return sorted(names)


def lora_target_modules(model, spec: str) -> list[str]:
    """``all`` -> every linear layer but lm_head; else the comma list, checked against the model."""
    spec = (spec or "all").strip()
    if spec == "all":
        names = linear_module_names(model)
        if not names:
            raise ConfigError("--lora_modules all found no linear layers in this model; list them explicitly")
        return names
    wanted = [m.strip() for m in spec.split(",") if m.strip()]
    leaves = {name.split(".")[-1] for name, _ in model.named_modules()}
    full_names = {name for name, _ in model.named_modules()}
    missing = [m for m in wanted if m not in leaves and m not in full_names]
    if missing:
        from airo.core import suggest

        hints = "".join(suggest(m, sorted(leaves)) for m in missing)
        raise ConfigError(f"--lora_modules: no module named {', '.join(missing)} in this model.{hints} "
                          f"Linear layers: {', '.join(linear_module_names(model))}")
    return wanted


def _common_kwargs(config, attn: str) -> dict[str, Any]:
    return {"attn_implementation": attn, "trust_remote_code": config.model.trust_remote_code}


def _from_pretrained(config, **kwargs):
    from transformers import AutoModelForCausalLM

    name = config.model.model_name_or_path
    if not name:
        raise ConfigError("--model_name_or_path is required")
    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load the model from {name!r}: {exc}") from None


GC_KWARGS = {"use_reentrant": False}


def _checkpointing_enable(model) -> None:
    """Activation (gradient) checkpointing; transformers 5 renamed the method."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=GC_KWARGS)
    else:  # pragma: no cover - transformers < 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)


# -- the loaders ---------------------------------------------------------------------------------

def load_qlora(config) -> LoadedModel:
    """LoRA on a 4-bit (QLoRA) / 8-bit bitsandbytes base, or on a 16/32-bit base."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from airo.core import load_tokenizer, model_checkpointing, model_placement, quant_storage_dtype, sync_special_tokens

    m = config.section("qlora")
    if config.get("full_finetune"):
        raise ConfigError("the qlora loader trains an adapter; --full_finetune needs --loader full (or auto)")
    notes: list[str] = []
    tokenizer = load_tokenizer(config)
    cdtype = compute_dtype(config)
    attn, attn_notes = resolve_attention(config, cdtype if m.bits in (4, 8) else base_dtype(config))
    notes += attn_notes
    kwargs = _common_kwargs(config, attn)
    if m.bits in (4, 8):
        from transformers import BitsAndBytesConfig

        storage = quant_storage_dtype(config, cdtype) if m.bits == 4 else None
        if m.bits == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=cdtype, bnb_4bit_use_double_quant=m.double_quant,
                bnb_4bit_quant_type=m.quant_type, **({} if storage is None else {"bnb_4bit_quant_storage": storage}))
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["dtype"] = cdtype
        # a 4/8-bit base stored as uint8 can be neither sharded nor moved once loaded: the run's
        # distributed backend places it (this process's GPU), or refuses a backend that must shard
        # it; stored in the compute dtype (FSDP2) it is sharded like any other weight
        kwargs.update(model_placement(config, shardable=storage is not None))
    else:
        kwargs["dtype"] = base_dtype(config)
    model = _from_pretrained(config, **kwargs)
    model.config.use_cache = False
    notes += sync_special_tokens(model, tokenizer)
    gc = model_checkpointing(config)  # --gradient_checkpointing, unless FSDP checkpoints the layers itself
    if m.bits in (4, 8):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs=GC_KWARGS)
    elif gc:
        _checkpointing_enable(model)
        model.enable_input_require_grads()
    targets = lora_target_modules(model, m.lora_modules)
    lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    notes.append(f"LoRA r={m.lora_r} alpha={m.lora_alpha:g} dropout={m.lora_dropout:g} on {', '.join(targets)}")
    if m.bits == 4:
        notes.append(f"base quantized to 4-bit {m.quant_type}{' with double quant' if m.double_quant else ''}, "
                     f"compute dtype {str(cdtype).replace('torch.', '')}")
    elif m.bits == 8:
        notes.append("base quantized to 8-bit (LLM.int8)")
    info: dict[str, Any] = {"bits": m.bits, "lora": {"r": m.lora_r, "alpha": m.lora_alpha, "dropout": m.lora_dropout,
                                                      "modules": targets}}
    if m.bits == 4:
        info.update(quant_type=m.quant_type, double_quant=bool(m.double_quant), **quantized_layout(model))
    return LoadedModel(model=model, tokenizer=tokenizer, is_peft=True,
                       quantized_bits=m.bits if m.bits in (4, 8) else None, notes=notes, info=info,
                       output=produces_adapter(config))


def load_full(config) -> LoadedModel:
    """Every weight trained: bf16 with --bf16, else float32 (see :func:`full_finetune_dtype`)."""
    import torch

    from airo.core import load_tokenizer, model_checkpointing, sync_special_tokens

    m = config.section("qlora")
    if m.bits in (4, 8):
        raise ConfigError("a full fine-tune needs --bits 16 or 32 (quantized weights cannot be trained directly)")
    notes: list[str] = []
    tokenizer = load_tokenizer(config)
    dtype = full_finetune_dtype(config)
    # flash-attn runs under the fp16/bf16 autocast of mixed precision even with fp32 weights
    attn, attn_notes = resolve_attention(config, compute_dtype(config) if dtype == torch.float32 else dtype)
    notes += attn_notes
    model = _from_pretrained(config, dtype=dtype, **_common_kwargs(config, attn))
    model.config.use_cache = False
    notes += sync_special_tokens(model, tokenizer)
    if model_checkpointing(config):  # --gradient_checkpointing, unless FSDP checkpoints the layers itself
        _checkpointing_enable(model)
    notes.append(f"full fine-tune in {str(dtype).replace('torch.', '')}"
                 + (" with DeepSpeed" if _uses_deepspeed(config) else ""))
    if dtype == torch.float32 and config.training.get("fp16"):
        notes.append("--fp16: the weights stay float32 (fp16 mixed precision needs fp32 master weights)")
    elif dtype == torch.float32 and m.bits == 16:
        notes.append("--bits 16 without --bf16: the weights are float32 (the seed's rule); pass --bf16 for bf16")
    return LoadedModel(model=model, tokenizer=tokenizer, is_peft=False, quantized_bits=None, notes=notes,
                       output=produces_full(config))


# -- what each loader's run saves (read by the actions through airo.core.planned_output) ----------

def produces_adapter(config) -> ModelOutput:
    """A LoRA adapter: small (megabytes), in float32 (peft keeps LoRA weights in fp32)."""
    return ModelOutput("adapter", 0, "float32")


def produces_full(config) -> ModelOutput:
    """Every weight: the base model's size on disk (when it is a local folder), in the dtype
    :func:`full_finetune_dtype` picks (read from the options, without importing torch)."""
    from airo.core import weights_bytes

    dtype = "float32" if config.get("bits") == 32 or not config.training.get("bf16") else "bfloat16"
    return ModelOutput("model", weights_bytes(config.model.model_name_or_path), dtype)


@hookimpl
def register_model_loaders(register):
    register("qlora", load_qlora, auto=lambda config: not config.get("full_finetune"), produces=produces_adapter,
             description="LoRA adapter on a 4-bit (QLoRA, nf4/fp4), 8-bit, 16-bit or 32-bit base "
                         "(--bits, --lora_r/--lora_alpha/--lora_dropout, --lora_modules)")
    register("full", load_full, auto=lambda config: bool(config.get("full_finetune")), produces=produces_full,
             description="full fine-tune of every weight, bf16 with --bf16 else fp32 (--full_finetune; "
                         "DeepSpeed ZeRO via --deepspeed)")
