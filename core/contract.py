"""The plugin contract, typed: what each ``register(...)`` accepts, the callables a plugin
hands over, and the contexts airo calls them with.

Every hook in :mod:`airo.core.hookspecs` receives a ``register`` function (commands: the
CLI group). The ``Register*`` protocols below are those functions' exact signatures (the
entry factories in :mod:`airo.core.registry` have them; ``tests/test_plugin_contract.py``
compares the two), and the other protocols are what airo calls with what:

=====================  ==============================================  ===========================
hook                   register(...)                                   airo calls
=====================  ==============================================  ===========================
dataset formats        :class:`RegisterFormat`                         ``converter(record)``
prompt templates       :class:`RegisterTemplate`                       ``template.render(...)``
options                :class:`RegisterOptions`                        ``args()``, ``validate``
model loaders          :class:`RegisterLoader`                         ``load(config)``, ``auto``
tokenizer patches      :class:`RegisterPatch`                          ``apply(tokenizer, config)``
post-training actions  :class:`RegisterAction`                         ``run(ctx)``, ``outputs``
evaluations            :class:`RegisterEvaluation`                     ``run(ctx)``
trainer callbacks      :class:`RegisterCallback`                       ``factory(ctx)``
next steps             :class:`RegisterNextSteps`                      ``lines(result)``
commands               ``register_commands(cli)``: :class:`CommandGroup`
=====================  ==============================================  ===========================

Nothing here imports torch, transformers or click: the protocols name what a plugin may
rely on, so a type checker (or a reader) sees the contract without running airo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .types import ActionOutput, Conversation, LoadedModel, ModelOutput


# -- what a plugin hands over -----------------------------------------------------------------

class FormatConverter(Protocol):
    """``converter(record)``: one record (a dict) -> a Conversation, a list of them, or None
    to skip it. Raise ``ValueError("what is wrong")`` for a bad record (airo adds where)."""

    def __call__(self, record: dict[str, Any], /) -> Conversation | list[Conversation] | None: ...


class ConfigPredicate(Protocol):
    """``auto(config)`` / ``detect(config)``: does this loader, action or patch apply?"""

    def __call__(self, config: Any, /) -> bool: ...


class ModelLoad(Protocol):
    """``load(config)``: the model ready to train and its tokenizer (the one the data was
    tokenized with: :func:`airo.core.load_tokenizer` gives it)."""

    def __call__(self, config: Any, /) -> LoadedModel: ...


class ModelProduces(Protocol):
    """``produces(config)``: what a loader's run will save, known before anything loads
    (an adapter or a whole model, and a lower bound of its size on disk)."""

    def __call__(self, config: Any, /) -> ModelOutput: ...


class PatchApply(Protocol):
    """``apply(tokenizer, config)``: the patched tokenizer (``tokenizer`` may be None when
    transformers could not load the original files)."""

    def __call__(self, tokenizer: Any, config: Any, /) -> Any: ...


class ActionRun(Protocol):
    """``run(ctx)``: a post-training action, on the main process, after training."""

    def __call__(self, ctx: ActionContext, /) -> None: ...


class ActionOutputs(Protocol):
    """``outputs(config)``: the folders an action writes, checked, probed and locked before
    training."""

    def __call__(self, config: Any, /) -> list[ActionOutput]: ...


class NextSteps(Protocol):
    """``lines(result)``: lines the run summary prints under "Next:" after a finished
    run (:class:`airo.core.TrainResult`): the commands that use what the run wrote."""

    def __call__(self, result: Any, /) -> list[str]: ...


class EvaluationRun(Protocol):
    """``run(ctx)`` at every evaluation: ``{metric: float}`` (``{}``: nothing to log)."""

    def __call__(self, ctx: EvaluationContextLike, /) -> Mapping[str, float]: ...


class CallbackFactory(Protocol):
    """``factory(ctx)``: a ``transformers.TrainerCallback`` instance or class."""

    def __call__(self, ctx: CallbackContextLike, /) -> Any: ...


@runtime_checkable
class OptionsArgs(Protocol):
    """An options section: a dataclass *class* whose fields all have defaults (and
    ``metadata={"help": ...}``). An instance may have ``validate(self, config)``, called once
    the whole config is known (raise ``ValueError`` naming the problem)."""

    __dataclass_fields__: dict[str, Any]


class CommandGroup(Protocol):
    """What ``register_commands(cli)`` receives: the root ``click.Group`` (the two methods a
    plugin uses)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def group(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def add_command(self, cmd: Any, name: str | None = None) -> None: ...


# -- the register functions, one per hook -------------------------------------------------------

class RegisterFormat(Protocol):
    def __call__(self, name: str, converter: FormatConverter, *, default_template: str | None = None,
                 description: str = "", record_kind: str = "conversation") -> Any: ...


class RegisterTemplate(Protocol):
    def __call__(self, name: str, template: Any, *, description: str = "") -> Any: ...


class RegisterOptions(Protocol):
    def __call__(self, name: str, args: type, *, description: str = "") -> Any: ...


class RegisterLoader(Protocol):
    def __call__(self, name: str, load: ModelLoad, *, auto: ConfigPredicate | None = None,
                 produces: ModelProduces | None = None, description: str = "") -> Any: ...


class RegisterPatch(Protocol):
    def __call__(self, name: str, apply: PatchApply, *, detect: ConfigPredicate | None = None,
                 description: str = "") -> Any: ...


class RegisterAction(Protocol):
    def __call__(self, name: str, run: ActionRun, *, order: int = 100, auto: ConfigPredicate | None = None,
                 outputs: ActionOutputs | None = None, description: str = "") -> Any: ...


class RegisterEvaluation(Protocol):
    def __call__(self, name: str, run: EvaluationRun, *, description: str = "") -> Any: ...


class RegisterCallback(Protocol):
    def __call__(self, name: str, factory: CallbackFactory, *, description: str = "") -> Any: ...


class RegisterObjective(Protocol):
    def __call__(self, name: str, objective: Any, *, record_kind: str, description: str = "") -> Any: ...


class RegisterNextSteps(Protocol):
    def __call__(self, name: str, lines: NextSteps, *, order: int = 100, description: str = "") -> Any: ...


#: hook name -> the protocol of the ``register`` it receives (commands get a CommandGroup)
REGISTER_PROTOCOLS: dict[str, type] = {
    "register_dataset_formats": RegisterFormat,
    "register_prompt_templates": RegisterTemplate,
    "register_options": RegisterOptions,
    "register_model_loaders": RegisterLoader,
    "register_tokenizer_patches": RegisterPatch,
    "register_post_train_actions": RegisterAction,
    "register_evaluations": RegisterEvaluation,
    "register_callbacks": RegisterCallback,
    "register_next_steps": RegisterNextSteps,
    "register_objectives": RegisterObjective,
}

#: hook name -> {argument of register: the protocol of the callable airo calls}
CALLABLE_PROTOCOLS: dict[str, dict[str, type]] = {
    "register_dataset_formats": {"converter": FormatConverter},
    "register_model_loaders": {"load": ModelLoad, "auto": ConfigPredicate, "produces": ModelProduces},
    "register_tokenizer_patches": {"apply": PatchApply, "detect": ConfigPredicate},
    "register_post_train_actions": {"run": ActionRun, "auto": ConfigPredicate, "outputs": ActionOutputs},
    "register_evaluations": {"run": EvaluationRun},
    "register_callbacks": {"factory": CallbackFactory},
    "register_next_steps": {"lines": NextSteps},
}


# -- the contexts airo calls with ---------------------------------------------------------------

@runtime_checkable
class ActionContext(Protocol):
    """What ``run(ctx)`` of a post-training action may use (:class:`airo.core.TrainContext`).

    ``output_dir`` is where the save action writes; ``adapter_dir`` that folder for adapter
    runs, else None; ``loaded`` the loader's :class:`airo.core.LoadedModel` (``output``:
    what it produces); ``state_dict`` the gathered weights of a sharded model (else None).
    ``outputs`` (name -> path) is what the actions wrote, for the summary and the next
    steps; ``info`` becomes ``airo_training.json``.
    """

    config: Any
    model: Any
    tokenizer: Any
    template: Any
    output_dir: str
    working_dir: str
    adapter_dir: str | None
    is_main_process: bool
    trainer: Any
    report: Any
    loaded: Any
    state_dict: dict | None
    info: dict[str, Any]
    outputs: dict[str, str]

    @property
    def is_peft(self) -> bool: ...

    def log(self, message: str) -> None: ...


@runtime_checkable
class CallbackContextLike(Protocol):
    """What a callback factory receives (:class:`airo.core.CallbackContext`)."""

    config: Any
    model: Any
    tokenizer: Any
    template: Any
    trainer: Any
    working_dir: str
    is_main_process: bool

    def log(self, message: str) -> None: ...


@runtime_checkable
class EvaluationContextLike(CallbackContextLike, Protocol):
    """What an evaluation's ``run(ctx)`` receives (:class:`airo.core.EvaluationContext`):
    the model in eval mode with gradients off, the step and the ranks, and helpers that run
    token sequences through the model on the trainer's device."""

    step: int
    rank: int
    world_size: int

    @property
    def device(self) -> Any: ...

    def batches(self, sequences: Iterable[list[int]], *, batch_size: int | None = None
                ) -> Iterator[tuple[dict[str, Any], list[int]]]: ...

    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any: ...


__all__ = [
    "CALLABLE_PROTOCOLS", "REGISTER_PROTOCOLS", "ActionContext", "ActionOutputs", "ActionRun", "CallbackContextLike",
    "CallbackFactory", "CommandGroup", "ConfigPredicate", "EvaluationContextLike", "EvaluationRun",
    "FormatConverter", "ModelLoad", "ModelProduces", "NextSteps", "OptionsArgs", "PatchApply", "RegisterAction",
    "RegisterCallback", "RegisterEvaluation", "RegisterFormat", "RegisterLoader", "RegisterNextSteps", "RegisterObjective",
    "RegisterOptions", "RegisterPatch", "RegisterTemplate",
]
