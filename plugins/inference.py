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
from typing import Any

import click

from airo.core import ConfigError, hookimpl
from airo.plugins.inference_loading import (ADAPTER_CONFIG, DTYPES, MODEL_CONFIG, TRAINING_INFO, _first_line,
                                            folder_kind, load_for_inference)

# End-of-turn markers of templates whose replies do not end with the EOS token (chatml,
# llama-3); they stop generation when the tokenizer has them as single tokens.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>")

__all__ = ["ADAPTER_CONFIG", "DTYPES", "MODEL_CONFIG", "TRAINING_INFO", "ChatSession", "folder_kind", "generate",
           "load_for_inference", "render_prompt"]


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


# -- prompting and generation ----------------------------------------------------------------

def render_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids of ``messages`` through the tokenizer's chat_template, with the
    generation prompt: the same call the save action's parity check makes."""
    from airo.core import inference_prompt_ids

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
    from airo.core import render_chat_template, tokenizer_source, tokenizer_template_variables

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


# -- what to do next after `airo train` ------------------------------------------------------------

# the outputs a finished run names (the save and merge actions'), best first: a merged model
# loads without its base
MODEL_OUTPUTS = ("merged model", "adapter", "model")


def chat_folder(result) -> str | None:
    """The folder of a finished run to talk to: a merged model if one was written, else the saved output."""
    return next((result.outputs[name] for name in MODEL_OUTPUTS if name in result.outputs), None)


def next_steps(result) -> list[str]:
    import shlex

    folder = chat_folder(result)
    if folder is None:
        return []
    return [f"talk to it:       airo chat {shlex.quote(folder)}",
            f"ask it one thing: airo generate {shlex.quote(folder)} --prompt \"Hello!\""]


@hookimpl
def register_next_steps(register):
    register("chat", next_steps, order=100, description="airo chat / airo generate with the run's model")


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
        _say_if_untrained(model)
        text, prompt_ids, completion_ids = generate(model, tokenizer, messages, stream=not as_json, **gen)
        if as_json:
            click.echo(json.dumps(_record(tokenizer, messages, text, prompt_ids, completion_ids), ensure_ascii=False))
        else:
            _say_if_invisible(tokenizer, text, completion_ids)

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
        _say_if_untrained(model)
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
            else:
                _say_if_invisible(tokenizer, reply, completion_ids)


def invisible_reply(tokenizer, text: str, completion_ids: list[int]) -> str | None:
    """What a reply that shows nothing on screen really was, or None when it shows something."""
    if text.strip():
        return None
    if not completion_ids:
        return "the model ended its reply at once (no tokens)"
    if text:
        shown = repr(text) if len(text) <= 20 else f"{len(text)} whitespace characters ({text[:8]!r}...)"
        return f"the reply is only whitespace: {shown}, {len(completion_ids)} token(s)"
    pieces = tokenizer.convert_ids_to_tokens(completion_ids[:8])
    more = f" and {len(completion_ids) - 8} more" if len(completion_ids) > 8 else ""
    return f"the reply is only special tokens: {' '.join(map(str, pieces))}{more}"


def _say_if_invisible(tokenizer, text: str, completion_ids: list[int]) -> None:
    note = invisible_reply(tokenizer, text, completion_ids)
    if note:
        click.echo()
        click.secho(f"({note})", err=True, fg="yellow")


def _say_if_untrained(model) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "airo_untrained", False):
        click.secho("(this is airo's tiny demo model, randomly initialised and barely trained: its replies are "
                    "noise; point --model_name_or_path at a real checkpoint for real answers)", err=True, dim=True)


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
