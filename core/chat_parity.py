"""Does the saved ``chat_template`` give the prompt ids the model was trained on?

Training tokenizes what the data pipeline builds (the reference path ``[BOS] +
tok(source)``, the generic path the rendered conversation in one pass); an inference
engine tokenizes the text the chat_template renders. Whether the two give the same ids
depends on the tokenizer: a SentencePiece llama tokenizer marks the start of ``source``
with a word boundary, which after a ``<s>`` written in the text only a legacy one
repeats. So the ``save`` action compares them on the run's own conversations and keeps
the template's rendering (``chat_template_variants()``) that agrees, or warns.

    result = choose_chat_template(config, tokenizer, template)
    result.matched, result.total, result.variant, result.chat_template
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import TrainConfig
from .types import Conversation

SAMPLE_SIZE = 60  # records read from the dataset for the check

__all__ = ["ParityResult", "check_chat_template", "choose_chat_template", "inference_prompt_ids",
           "reload_as_saved", "sample_conversations", "training_prompt_ids"]


@dataclass
class ParityResult:
    """How many checked conversations the chosen ``chat_template`` reproduces.

    ``total`` counts the conversations compared; ``not_covered`` those the template says
    its chat_template cannot express (``chat_template_covers``), ``skipped`` those training
    itself refuses. ``counts`` has the matches of every rendering tried, ``note`` says why
    nothing was compared.
    """

    matched: int = 0
    total: int = 0
    variant: str | None = None
    chat_template: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    not_covered: int = 0
    skipped: int = 0
    first_mismatch: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.matched == self.total

    def to_dict(self) -> dict[str, Any]:
        """What ``airo_training.json`` records (the template text itself is saved with the tokenizer)."""
        out = {"matched": self.matched, "total": self.total, "variant": self.variant, "counts": dict(self.counts),
               "not_covered": self.not_covered, "skipped": self.skipped, "first_mismatch": self.first_mismatch}
        if self.note:
            out["note"] = self.note
        return out

    def message(self) -> str:
        """One log line: a confirmation, or a warning that inference will differ from training."""
        if self.total == 0:
            return f"warning: chat_template not checked against the training prompts: {self.note or 'no conversations'}"
        if self.ok:
            rendering = "" if self.variant == "default" else f" (rendering: {self.variant})"
            return (f"chat_template reproduces the training prompts of {self.matched} of {self.total} "
                    f"conversations{rendering}")
        text = (f"warning: chat_template matches the training prompts for {self.matched} of {self.total} "
                "conversations; inference prompts will differ from training")
        if self.matched:
            text += f" for the other {self.total - self.matched}"
        return text + (f" (first difference: {self.first_mismatch})" if self.first_mismatch else "")


def training_prompt_ids(tokenizer, plan, conversation: Conversation, config: TrainConfig) -> list[int]:
    """The ids training gives everything before the last reply (the pipeline's own
    tokenization; lengths unlimited, since a truncated example says nothing about the prompt)."""
    from .data.pipeline import tokenize_conversation
    from .data.tokenize import IGNORE_INDEX

    # last_reply without train_on_source: the first trained token starts the last reply; the
    # input ids are the same for every --train_on of the same tokenization.
    plan = dataclasses.replace(plan, train_on="last_reply", train_on_source=False)
    data = dataclasses.replace(config.data, train_on_source=False, skip_excess_length=False,
                               model_max_len=sys.maxsize)
    example = tokenize_conversation(tokenizer, plan, conversation, dataclasses.replace(config, data=data))
    first = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
    return example.input_ids[:first]


def tokenizer_source(tokenizer) -> str:
    """How an error names a tokenizer's own chat_template."""
    where = getattr(tokenizer, "name_or_path", "") or ""
    return f"the tokenizer of {where}" if where else "the tokenizer"


def inference_prompt_ids(tokenizer, chat_template: str, messages: list[dict[str, str]], *,
                         source: str | None = None) -> list[int]:
    """``apply_chat_template`` of ``messages`` with the generation prompt, as ids: the text
    rendered by the bounded renderer (:func:`airo.core.template_sandbox.render_chat_template`,
    the same text transformers renders), tokenized as transformers tokenizes it (no special
    tokens added). ``source`` names the template in errors (default: the tokenizer)."""
    from .template_sandbox import render_chat_template, tokenizer_template_variables

    text = render_chat_template(chat_template, messages, source=source or tokenizer_source(tokenizer),
                                add_generation_prompt=True, **tokenizer_template_variables(tokenizer))
    out = tokenizer(text, add_special_tokens=False)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _first_difference(tokenizer, expected: list[int], got: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    window = slice(max(0, at - 1), at + 2)
    return (f"token {at}: training {tokenizer.convert_ids_to_tokens(expected[window])}, "
            f"chat_template {tokenizer.convert_ids_to_tokens(got[window])}")


def check_chat_template(tokenizer, template, conversations: Iterable[Conversation | tuple[Conversation, str]],
                        plan, config: TrainConfig, *, inference_tokenizer=None) -> ParityResult:
    """Compare, per conversation, the training prompt ids (``tokenizer``, ``plan``, ``config``)
    with ``apply_chat_template(messages[:-1], add_generation_prompt=True)`` on
    ``inference_tokenizer`` (default: the same tokenizer) for each rendering the template
    offers; the first that reproduces every conversation wins, else the one that matches most.

    ``conversations`` may be ``(conversation, where)`` pairs; ``where`` (e.g. the file and
    line) then names the first mismatch.
    """
    from .data.tokenize import Dropped

    inference_tokenizer = inference_tokenizer or tokenizer
    variants_of = getattr(template, "chat_template_variants", None)
    variants = variants_of() if callable(variants_of) else {"default": getattr(template, "chat_template", None)}
    variants = {name: text for name, text in variants.items() if text}
    if not variants:
        return ParityResult(note=f"the prompt template {template!r} has no chat_template")
    covers = getattr(template, "chat_template_covers", None)
    result = ParityResult()
    cases = []  # (where, training prompt ids, messages before the last reply)
    for item in conversations:
        conversation, where = item if isinstance(item, tuple) else (item, None)
        if callable(covers) and not covers(conversation):
            result.not_covered += 1
            continue
        try:
            expected = training_prompt_ids(tokenizer, plan, conversation, config)
        except (Dropped, ValueError):  # training refuses it as well
            result.skipped += 1
            continue
        messages = [{"role": m.role, "content": m.content} for m in conversation.messages[:-1]]
        cases.append((where or f"conversation {len(cases) + 1}", expected, messages))
    result.total = len(cases)
    if not cases:
        result.note = "none of the sampled conversations can be compared"
        return result
    from .template_sandbox import ChatTemplateError, ChatTemplateLimit

    source = template_source(template)
    best: tuple[int, str, str | None] | None = None
    for name, chat_template in variants.items():
        matched, mismatch = 0, None
        for where, expected, messages in cases:
            try:
                got = inference_prompt_ids(inference_tokenizer, chat_template, messages,
                                           source=source if name == "default" else f"{source} (rendering {name})")
                detail = None if got == expected else _first_difference(tokenizer, expected, got)
            except ChatTemplateLimit as exc:  # the template's fault whatever the conversation: stop trying it
                mismatch = mismatch or f"{where}, {exc}"
                break
            except ChatTemplateError as exc:  # a template error is a mismatch like any other
                detail = str(exc)
            except Exception as exc:  # noqa: BLE001 - the tokenizer failing on the text
                detail = f"the chat_template failed: {type(exc).__name__}: {exc}"
            if detail is None:
                matched += 1
            elif mismatch is None:
                mismatch = f"{where}, {detail}"
        result.counts[name] = matched
        if best is None or matched > best[0]:
            best = (matched, name, mismatch)
        if matched == len(cases):
            break
    result.matched, result.variant, result.first_mismatch = best
    result.chat_template = variants[result.variant]
    return result


def template_source(template) -> str:
    """How an error names a prompt template: its name and the plugin that registered it."""
    name = getattr(template, "name", None) or repr(template)
    try:
        from .plugins import get_registry

        entry = next((e for e in get_registry().templates.values() if e.template is template), None)
    except Exception:  # noqa: BLE001 - naming is best effort; the registry itself reports its problems
        entry = None
    if entry is None:
        return f"the prompt template {name!r}"
    return f"the prompt template {entry.name!r} of plugin {entry.plugin!r}"


def sample_conversations(config: TrainConfig, plan,
                         limit: int = SAMPLE_SIZE) -> tuple[list[tuple[Conversation, str]], str | None]:
    """The conversations of the first ``limit`` records of the training data, read as
    training reads them (format converter, --include_sources, --expand_conversations), each
    with its location; records that fail are left out. Returns (them, why there are none)."""
    from .data.io import open_dataset
    from .data.cache import is_preprocessed
    from .data.pipeline import read_conversations
    from .data.report import DataReport
    from .errors import AiroError

    dataset = config.data.dataset
    if not dataset:
        return [], "no --dataset"
    if is_preprocessed(dataset):
        return [], f"{dataset} is an `airo preprocess` output, which keeps token ids, not conversations"
    skipping = dataclasses.replace(config, data=dataclasses.replace(config.data, on_bad_record="skip"))
    try:
        records = itertools.islice(open_dataset(dataset)["train"], limit)
        if getattr(plan.fmt, "record_kind", "conversation") != "conversation":  # preference data: the prompts
            from .preference import record_conversations

            conversations = record_conversations(records, plan.fmt)[:limit]
        else:
            items = read_conversations(records, skipping, plan.fmt, DataReport())
            conversations = [(conversation, raw.location) for conversation, raw in items[:limit]]
    except (AiroError, OSError) as exc:
        return [], f"cannot read {dataset}: {exc}"
    return conversations, None if conversations else f"no usable conversation in the first {limit} records"


def reload_as_saved(tokenizer, *, trust_remote_code: bool = False):
    """``tokenizer`` saved (as the ``save`` action saves it) and loaded back: what inference
    engines will load, which can tokenize differently from the object in memory."""
    import tempfile

    from transformers import AutoTokenizer

    from .tokenizer import save_tokenizer

    with tempfile.TemporaryDirectory(prefix="airo-tokenizer-") as folder:
        save_tokenizer(tokenizer, folder)
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def choose_chat_template(config: TrainConfig, tokenizer, template, *, limit: int = SAMPLE_SIZE,
                         inference_tokenizer=None) -> ParityResult:
    """:func:`check_chat_template` on the first ``limit`` records of ``config``'s dataset."""
    from .data.plan import resolve_plan

    plan = resolve_plan(config)
    conversations, why = sample_conversations(config, plan, limit)
    if not conversations:
        return ParityResult(note=why)
    return check_chat_template(tokenizer, template, conversations, plan, config,
                               inference_tokenizer=inference_tokenizer)
