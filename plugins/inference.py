"""``airo generate`` and ``airo chat``: talk to a model airo trained.

The work is done by plain functions, usable without the CLI:

    model, tokenizer, description = load_for_inference("out/adapter")
    text, prompt_ids, completion_ids = generate(model, tokenizer, [{"role": "user", "content": "hi"}])

An output folder is a LoRA/QLoRA adapter (``adapter_config.json``, base from
``airo_training.json`` or the adapter config), a merged model or a full fine-tune. The
prompt is always the tokenizer's saved ``chat_template``: the save action checked that it
reproduces the training prompts, so inference sees what training saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from airo.core import hookimpl
from airo.core.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TRAINING_INFO = "airo_training.json"
# End-of-turn markers of templates whose replies do not end with the EOS token (chatml,
# llama-3); they stop generation when the tokenizer has them as single tokens.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>")
DTYPES = ("float32", "bfloat16", "float16")

__all__ = ["ChatSession", "generate", "load_for_inference", "render_prompt"]


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


def _stop_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


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


# -- prompting and generation ----------------------------------------------------------------

def render_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids of ``messages`` through the tokenizer's chat_template, with the
    generation prompt: the same call the save action's parity check makes."""
    from airo.core.chat_parity import inference_prompt_ids

    if not tokenizer.chat_template:
        raise ConfigError("the tokenizer has no chat_template")
    try:
        return inference_prompt_ids(tokenizer, tokenizer.chat_template, messages)
    except ConfigError:  # the bounded renderer's one line, naming the tokenizer
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizer failing on the rendered text
        raise ConfigError(f"the chat_template cannot render this conversation: {_first_line(exc)}") from None


def check_generation_options(*, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float | None = None,
                             top_k: int | None = None, repetition_penalty: float | None = None,
                             seed: int | None = None) -> None:
    """A ConfigError naming the first out-of-range option."""
    checks = [
        ("--max_new_tokens", max_new_tokens, max_new_tokens >= 1, "at least 1"),
        ("--temperature", temperature, temperature >= 0, "0 (greedy) or more"),
        ("--top_p", top_p, top_p is None or 0 < top_p <= 1, "in (0, 1]"),
        ("--top_k", top_k, top_k is None or top_k >= 0, "0 (off) or more"),
        ("--repetition_penalty", repetition_penalty, repetition_penalty is None or repetition_penalty > 0,
         "more than 0 (1 = off)"),
    ]
    for option, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{option} must be {expected}, got {value}")


def generate(model, tokenizer, messages: list[dict[str, str]], *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
             repetition_penalty: float | None = None, seed: int | None = None,
             stream: bool = False) -> tuple[str, list[int], list[int]]:
    """The model's reply to ``messages``: ``(text, prompt_ids, completion_ids)``.

    ``temperature`` 0 is greedy (reproducible); above 0 samples, with ``top_p``/``top_k``
    (None: the model's generation_config). Generation stops at EOS (or an end-of-turn
    token). ``stream`` prints the text to stdout as it is generated.
    """
    import copy

    import torch

    check_generation_options(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                             repetition_penalty=repetition_penalty)
    prompt_ids = render_prompt(tokenizer, messages)
    config = copy.deepcopy(model.generation_config)
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else None)
    config.update(max_new_tokens=max_new_tokens, eos_token_id=stop or None, pad_token_id=pad)
    if temperature == 0:
        # unset the sampling knobs a generation_config may carry, which greedy ignores (with a warning)
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        config.update(do_sample=True, temperature=temperature)
        config.update(**{k: v for k, v in (("top_p", top_p), ("top_k", top_k)) if v is not None})
    if repetition_penalty is not None:
        config.repetition_penalty = repetition_penalty
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=config, streamer=streamer)
    completion_ids = output[0, len(prompt_ids):].tolist()
    text = tokenizer.decode(completion_ids, skip_special_tokens=True)
    return text, prompt_ids, completion_ids


class ChatSession:
    """A conversation that keeps its history: ``ask`` adds the user's message and the reply."""

    def __init__(self, model, tokenizer, *, system: str | None = None, **gen: Any):
        self.model, self.tokenizer, self.system, self.gen = model, tokenizer, system, gen
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str, *, stream: bool = False) -> tuple[str, list[int], list[int]]:
        messages = self.messages + [{"role": "user", "content": text}]
        reply, prompt_ids, completion_ids = generate(self.model, self.tokenizer, messages, stream=stream,
                                                     **self.gen)
        # stripped, as replies are in training data; the template adds its own spacing
        self.messages = messages + [{"role": "assistant", "content": reply.strip()}]
        return reply, prompt_ids, completion_ids


def _record(tokenizer, messages, text, prompt_ids, completion_ids) -> dict[str, Any]:
    from airo.core.chat_parity import tokenizer_source
    from airo.core.template_sandbox import render_chat_template, tokenizer_template_variables

    rendered = render_chat_template(tokenizer.chat_template, messages, source=tokenizer_source(tokenizer),
                                    add_generation_prompt=True, **tokenizer_template_variables(tokenizer))
    return {"prompt": messages[-1]["content"], "completion": text, "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(completion_ids), "rendered_prompt": rendered,
            "prompt_ids": prompt_ids, "completion_ids": completion_ids}


# -- the commands ----------------------------------------------------------------------------

def _model_options(function):
    options = [
        click.argument("folder", type=click.Path()),
        click.option("--base", default=None, help="Base model of an adapter (default: the one it was trained on)."),
        click.option("--dtype", type=click.Choice(DTYPES), default=None,
                     help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA)."),
        click.option("--load_in_4bit", "--load-in-4bit", is_flag=True,
                     help="Quantize the model to 4-bit with bitsandbytes (CUDA only)."),
        click.option("--trust_remote_code", "--trust-remote-code", is_flag=True,
                     help="Allow the model's own code (only for models you trust)."),
        click.option("--system", default=None, help="System prompt."),
        click.option("--max_new_tokens", "--max-new-tokens", type=int, default=256, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True,
                     help="0 is greedy (reproducible); above 0 samples."),
        click.option("--top_p", "--top-p", type=float, default=None, help="Nucleus sampling (with --temperature)."),
        click.option("--top_k", "--top-k", type=int, default=None, help="Top-k sampling (with --temperature)."),
        click.option("--repetition_penalty", "--repetition-penalty", type=float, default=None,
                     help="Above 1 discourages repeats."),
        click.option("--seed", type=int, default=None, help="Seed for sampling."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print a JSON object (chat: one per turn) instead of streaming text."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _load(folder, base, dtype, load_in_4bit, trust_remote_code):
    model, tokenizer, description = load_for_inference(folder, base, dtype, load_in_4bit=load_in_4bit,
                                                       trust_remote_code=trust_remote_code)
    click.secho(f"loaded {description}", err=True, dim=True)
    return model, tokenizer


@hookimpl
def register_commands(cli):
    @cli.command("generate")
    @_model_options
    @click.option("--prompt", "-p", required=True, help="The user message ('-' reads it from stdin).")
    def generate_command(folder, base, dtype, load_in_4bit, trust_remote_code, system, as_json, prompt, **gen):
        """One reply to --prompt from an airo output folder (adapter, merged or full model)."""
        folder_kind(folder)  # a wrong folder or option is reported before the model loads
        check_generation_options(**gen)
        if prompt == "-":
            prompt = sys.stdin.read().rstrip("\n")
        model, tokenizer = _load(folder, base, dtype, load_in_4bit, trust_remote_code)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text, prompt_ids, completion_ids = generate(model, tokenizer, messages, stream=not as_json, **gen)
        if as_json:
            click.echo(json.dumps(_record(tokenizer, messages, text, prompt_ids, completion_ids), ensure_ascii=False))

    @cli.command("chat")
    @_model_options
    def chat_command(folder, base, dtype, load_in_4bit, trust_remote_code, system, as_json, **gen):
        """Chat with an airo output folder; /reset clears the history, /exit (or end of input) quits.

        Reads one message per line from stdin, so it also works piped:
        printf 'hi\\nand then?\\n' | airo chat OUT
        """
        folder_kind(folder)
        check_generation_options(**gen)
        model, tokenizer = _load(folder, base, dtype, load_in_4bit, trust_remote_code)
        session = ChatSession(model, tokenizer, system=system, **gen)
        interactive = sys.stdin.isatty()
        if interactive:
            click.secho("/reset clears the history, /exit quits", err=True, dim=True)
        for line in _lines(interactive):
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset()
                click.secho("(history cleared)", err=True, dim=True)
                continue
            reply, prompt_ids, completion_ids = session.ask(text, stream=not as_json)
            if as_json:
                record = _record(tokenizer, session.messages[:-1], reply, prompt_ids, completion_ids)
                click.echo(json.dumps(record, ensure_ascii=False))


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin
        return
    try:
        import readline  # noqa: F401 - gives input() line editing and history
    except ImportError:  # pragma: no cover - not on every platform
        pass
    while True:
        try:
            yield input(">>> ")
        except EOFError:
            click.echo(err=True)
            return
