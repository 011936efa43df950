"""The data types plugins exchange with the core. No heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise ValueError(f"{self.role} message content must be a string, got {type(self.content).__name__}")


@dataclass
class Conversation:
    """One training conversation.

    ``metadata`` carries what the pipeline uses around the messages: ``category`` and
    ``source`` (eval stratification, ``--include_sources``), ``id``, and format hints a
    template may honour (``skip_prompt_formatting`` for the legacy airoboros format).
    """

    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError unless this is a trainable conversation.

        Rules: not empty; at most one system message, and only first; after it, user and
        assistant alternate starting with user; the last message is the assistant's.
        """
        msgs = self.messages
        if not msgs:
            raise ValueError("empty conversation")
        body = msgs[1:] if msgs[0].role == "system" else msgs
        if not body:
            raise ValueError("conversation has only a system message")
        for i, m in enumerate(body):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                pos = i + (len(msgs) - len(body))
                if m.role == "system":
                    raise ValueError(f"message {pos}: a system message may only come first")
                raise ValueError(f"message {pos}: roles out of order: expected {expected}, got {m.role}")
        if body[-1].role != "assistant":
            raise ValueError("conversation ends on a user turn; the last message must be the assistant's reply")

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def turns(self) -> list[tuple[str, str]]:
        """(user, assistant) pairs after the optional system message."""
        body = self.messages[1:] if self.system is not None else self.messages
        return [(body[i].content, body[i + 1].content) for i in range(0, len(body) - 1, 2)]


# What a dataset format's converter returns, and what an objective consumes: conversations
# (SFT), preference pairs (DPO, IPO, SimPO, ORPO) or labelled single replies (KTO).
RECORD_KINDS: tuple[str, ...] = ("conversation", "preference", "unpaired")


def _check_prefix(prefix: list[Message], reply: str, what: str) -> None:
    if not isinstance(reply, str):
        raise ValueError(f"the {what}{' ' if what else ''}reply must be a string, got {type(reply).__name__}")
    if not prefix or prefix[-1].role != "user":
        raise ValueError("the conversation before the reply must end with a user message")
    Conversation([*prefix, Message("assistant", reply)]).validate()


@dataclass
class PreferencePair:
    """Two final assistant replies to one conversation prefix: ``prefix`` (an optional system
    message, then user/assistant turns ending with the user's) answered by ``chosen`` (the
    preferred reply) and ``rejected``. ``metadata`` as for :class:`Conversation`."""

    prefix: list[Message]
    chosen: str
    rejected: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError unless prefix + each reply is a trainable conversation."""
        _check_prefix(self.prefix, self.chosen, "chosen")
        _check_prefix(self.prefix, self.rejected, "rejected")

    def conversation(self, which: str) -> Conversation:
        """The prefix followed by the ``"chosen"`` or ``"rejected"`` reply: what SFT would train on."""
        reply = {"chosen": self.chosen, "rejected": self.rejected}[which]
        return Conversation([*self.prefix, Message("assistant", reply)], dict(self.metadata))


@dataclass
class UnpairedExample:
    """One final assistant reply to a conversation prefix, labelled ``desirable`` or not (KTO)."""

    prefix: list[Message]
    reply: str
    desirable: bool
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.desirable, bool):
            raise ValueError(f"desirable must be true or false, got {self.desirable!r}")
        _check_prefix(self.prefix, self.reply, "")  # "the reply must be..."

    def conversation(self) -> Conversation:
        return Conversation([*self.prefix, Message("assistant", self.reply)], dict(self.metadata))


@dataclass(frozen=True)
class Segment:
    """A piece of rendered prompt text.

    ``reply`` marks text the model should learn to produce (an assistant turn and its
    end-of-turn marker); ``turn`` is the index of the exchange it belongs to, so the
    pipeline can train on the last reply only, on every reply, or on everything.
    """

    text: str
    reply: bool = False
    turn: int = 0


@runtime_checkable
class PromptTemplate(Protocol):
    """What ``register_prompt_templates`` expects (see CONTRIBUTING.md).

    ``render`` turns a conversation into segments; concatenated, they are the exact text
    the model sees, special-token strings included (``bos_token``/``eos_token`` are the
    tokenizer's own strings). ``chat_template`` is the Jinja template inference engines
    use; it must produce the same text for the prompt before any assistant reply.
    """

    def render(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> list[Segment]: ...

    @property
    def chat_template(self) -> str: ...


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    converter: Callable[[dict], Any]
    default_template: str | None = None
    description: str = ""
    plugin: str = ""
    record_kind: str = "conversation"  # what the converter returns: one of RECORD_KINDS


@dataclass(frozen=True)
class TemplateEntry:
    name: str
    template: Any
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ModelLoader:
    """``load(config) -> LoadedModel``; ``config`` is the validated ``airo.core.config.TrainConfig``.
    ``auto(config) -> bool`` says whether ``--loader auto`` picks it (exactly one may)."""

    name: str
    load: Callable[[Any], Any]
    auto: Callable[[Any], bool] | None = None
    description: str = ""
    plugin: str = ""
    # ``produces(config) -> ModelOutput``: what the run will save, before anything loads
    produces: Callable[[Any], "ModelOutput"] | None = None


@dataclass(frozen=True)
class PostTrainAction:
    """``run(context)`` after training; ``auto(config) -> bool`` says whether it runs when
    the user did not list actions explicitly (None: only when named). ``outputs(config) ->
    list[ActionOutput]`` names the folders it writes, so the run checks, probes and locks
    them before any model loads."""

    name: str
    run: Callable[[Any], Any]
    order: int = 100
    auto: Callable[[Any], bool] | None = None
    outputs: Callable[[Any], list["ActionOutput"]] | None = None
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ActionOutput:
    """A folder a post-training action writes as a whole: ``option`` names it in messages
    (``--merged_output_dir``), ``min_bytes`` is a lower bound of what it will hold (the
    free-space check before training), ``kind`` the kind of folder it is (one of
    ``airo.core.atomic.KINDS``): a folder stamped with another kind is refused before
    training (None: any kind the action's own write accepts)."""

    option: str
    path: str
    min_bytes: int = 0
    kind: str | None = None


@dataclass(frozen=True)
class OptionsSection:
    """A plugin's options: ``args`` is a dataclass whose fields (with defaults and
    ``metadata={"help": ...}``) become flags and YAML keys. A field with
    ``metadata={"resumable": True}`` may change when a run resumes (it does not change the
    numbers). An optional ``validate(self, config)`` method checks (or completes) the
    values once the whole config is known."""

    name: str
    args: type
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Evaluation:
    """``run(ctx) -> {metric: float}`` at every evaluation the trainer runs; ``ctx`` is an
    ``airo.core.training.evaluation.EvaluationContext``. Returning ``{}`` logs nothing (an
    evaluation its options leave off)."""

    name: str
    run: Callable[[Any], dict[str, float]]
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class TrainerCallbackEntry:
    """``factory(ctx) -> transformers.TrainerCallback``, added to the run's Trainer; ``ctx``
    is an ``airo.core.training.evaluation.CallbackContext``."""

    name: str
    factory: Callable[[Any], Any]
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Objective:
    """A training objective (``--objective NAME``): ``objective`` has ``prepare(config,
    tokenizer, *, rejects_dir)`` (the tokenized datasets, an
    ``airo.core.data.plan.PreparedData``) and ``training_data(config, train, tokenizer, model,
    args, trainer_cls)`` (the train dataset, collator, Trainer class and packing stats or
    None); ``record_kind`` is what it reads from the dataset format (one of
    :data:`RECORD_KINDS`)."""

    name: str
    objective: Any
    record_kind: str = "conversation"
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class TokenizerPatch:
    """``apply(tokenizer, config) -> tokenizer``; ``detect(config) -> bool`` says whether it
    applies automatically (None: only when asked for)."""

    name: str
    apply: Callable[[Any, Any], Any]
    detect: Callable[[Any], bool] | None = None
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ModelOutput:
    """What a loader's run saves, so actions need not read the loader's options: ``kind``
    ``"adapter"`` (a LoRA adapter beside its base) or ``"model"`` (every weight), ``min_bytes`` a
    lower bound of its size on disk (the free-space check; 0 when small or unknown) and
    ``dtype`` its weights' dtype when known (``"bfloat16"``). A loader declares it with
    ``register(..., produces=...)`` before training and on the :class:`LoadedModel` it returns."""

    kind: Literal["adapter", "model"]
    min_bytes: int = 0
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("adapter", "model"):
            raise ValueError(f"ModelOutput kind must be 'adapter' or 'model', got {self.kind!r}")

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"


@dataclass(frozen=True)
class NextStepsEntry:
    """``lines(result) -> list[str]``: what to do next with a finished run's outputs (the
    run summary prints them under "Next:"), in ascending ``order``."""

    name: str
    lines: Callable[[Any], list[str]]
    order: int = 100
    description: str = ""
    plugin: str = ""


@dataclass
class LoadedModel:
    """What a model loader returns. ``output`` says what the run saves (an adapter or a
    model; derived from ``is_peft`` when the loader leaves it out)."""

    model: Any
    tokenizer: Any
    is_peft: bool = False
    quantized_bits: int | None = None
    notes: list[str] = field(default_factory=list)
    # Recorded in airo_training.json beside the outputs (e.g. the base's bits and 4-bit layout,
    # which a later merge needs to reproduce what the adapter was trained against).
    info: dict[str, Any] = field(default_factory=dict)
    output: ModelOutput | None = None

    def __post_init__(self) -> None:
        if self.output is None:
            self.output = ModelOutput("adapter" if self.is_peft else "model")
