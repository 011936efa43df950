"""Hook specifications: the extension points of airo.

Every hook is callback style: airo calls the hook with a ``register`` function and the
plugin calls it once per thing it provides, so one plugin can register many. Each spec
is documented in CONTRIBUTING.md with its exact signature (a test checks this).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("airo")
hookimpl = pluggy.HookimplMarker("airo")


@hookspec
def register_dataset_formats(register):
    """Register dataset formats.

    ``register(name, converter, *, default_template=None, description="", record_kind="conversation")``.
    ``converter(record: dict)`` returns an ``airo.core.Conversation``, a list of them, or
    ``None`` to skip the record (the skip is counted in the report). Raise ``ValueError``
    with a message for a bad record; airo adds the file and line. A format of preference
    data says so with ``record_kind="preference"`` (its converter returns
    ``airo.core.PreferencePair``) or ``"unpaired"`` (``airo.core.UnpairedExample``).
    """


@hookspec
def register_prompt_templates(register):
    """Register prompt templates.

    ``register(name, template, *, description="")``. ``template`` implements
    ``airo.core.PromptTemplate``: ``render(conversation, *, bos_token, eos_token) ->
    list[Segment]`` and a ``chat_template`` Jinja string. It may also implement
    ``source_target(conversation, *, bos_token, eos_token) -> (source, target)`` to offer
    the reference (airoboros-compatible) tokenization of the last reply.
    """


@hookspec
def register_options(register):
    """Register option sections.

    ``register(name, args, *, description="")``: ``name`` is the section. ``args`` is a
    dataclass: each field (with a default and ``metadata={"help": ...}``) becomes a flag
    ``--field_name`` and a YAML key (flat, or under ``section:``), converted and validated like
    airo's own options. Plugins read the
    values with ``config.get("field_name")`` or ``config.section("section")`` (the dataclass
    instance). ``metadata={"resumable": True}`` marks a field that may change on resume.
    """


@hookspec
def register_model_loaders(register):
    """Register model loaders.

    ``register(name, load, *, auto=None, produces=None, description="")``. ``load(config:
    TrainConfig)`` returns an ``airo.core.LoadedModel`` (model ready to train, tokenizer).
    ``auto(config) -> bool`` says whether ``--loader auto`` (the default) picks this loader.
    ``produces(config) -> airo.core.ModelOutput`` says what the run will save (an adapter or a
    whole model, its size) before anything loads; actions read it (``airo.core.planned_output``)
    instead of the loader's options. Keep heavy imports (torch, transformers) inside ``load``.
    """


@hookspec
def register_tokenizer_patches(register):
    """Register tokenizer patches.

    ``register(name, apply, *, detect=None, description="")``. ``apply(tokenizer, config)``
    returns the patched tokenizer. ``detect(config) -> bool`` turns the patch on
    automatically; without it the patch runs only when named in ``--tokenizer_patches``.
    """


@hookspec
def register_post_train_actions(register):
    """Register post-training actions.

    ``register(name, run, *, order=100, auto=None, outputs=None, description="")``.
    ``run(context: TrainContext)`` runs after training, in ascending ``order``, on the main
    process only. ``auto(config) -> bool`` says whether it runs by default; without it the
    action runs only when named in ``--post_train_actions``. ``outputs(config) ->
    list[ActionOutput]`` names the folders it writes (checked, probed and locked before
    training).
    """


@hookspec
def register_evaluations(register):
    """Register evaluations run while training.

    ``register(name, run, *, description="")``. ``run(ctx: EvaluationContext)`` is called at
    every evaluation the trainer runs (``--eval_strategy``, ``--eval_steps``), on every rank,
    with the model in eval mode and gradients off, and returns ``{metric: float}`` (``{}``:
    nothing to log). airo averages each metric over the ranks and logs it through the
    trainer (metrics.jsonl, wandb, tensorboard) and in the run summary. A failing evaluation
    is reported with its plugin's name and the training goes on.
    """


@hookspec
def register_callbacks(register):
    """Register ``transformers.TrainerCallback`` factories.

    ``register(name, factory, *, description="")``. ``factory(ctx: CallbackContext)``
    returns a ``transformers.TrainerCallback`` (an instance or its class), added to the
    run's Trainer once it is built, on every rank.
    """


@hookspec
def register_objectives(register):
    """Register training objectives (``--objective NAME``; ``sft`` is the built-in default).

    ``register(name, objective, *, record_kind, description="")``. ``record_kind`` is what the
    objective reads from the dataset format: ``"conversation"``, ``"preference"`` (pairs) or
    ``"unpaired"`` (labelled single replies). ``objective`` has ``prepare(config, tokenizer, *,
    rejects_dir)`` -> the tokenized datasets and ``training_data(config, train, tokenizer,
    model, args, trainer_cls)`` -> ``(train_dataset, collator, trainer_class, packing)``;
    ``airo.core.PreferenceObjective`` is a base class that needs only a ``loss`` method.
    """


@hookspec
def register_next_steps(register):
    """Register what to do next with a finished run's outputs.

    ``register(name, lines, *, order=100, description="")``. ``lines(result: TrainResult) ->
    list[str]`` returns the lines (commands, files) the run summary prints under "Next:" on the
    main process, in ascending ``order``; ``[]`` when the run wrote nothing it applies to.
    ``result.outputs`` is what the actions wrote (name -> path), ``result.working_dir`` the
    run's checkpoints and logs. A plugin that adds a command says here when to use it.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``airo`` CLI: ``cli`` is the root ``click.Group``.

    Use ``@cli.command()`` or ``cli.add_command(...)``; keep imports inside the command.
    """
