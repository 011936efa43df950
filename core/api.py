"""The Python API. Every CLI command is one call into a function here.

    from airo.core import api
    config = api.load_config("train.yaml", ["--num_train_epochs", "1"])
    result = api.train(config)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import TrainConfig, build_config
from .plugins import get_registry
from .registry import PluginInfo, Registry

if TYPE_CHECKING:  # the data pipeline and the training run are imported when called, not here
    from .data.preprocess import PreprocessResult
    from .training.context import TrainResult


def load_config(config_file: str | None = None, argv: list[str] | None = None, *,
                include_training: bool = True, **values: Any) -> TrainConfig:
    """Defaults < YAML ``config_file`` < keyword ``values`` < ``argv`` flags, validated."""
    return build_config(config_file, argv, include_training=include_training, values=values)


def registry() -> Registry:
    """Everything the installed plugins registered (formats, templates, loaders, actions, patches)."""
    return get_registry()


def plugins() -> list[PluginInfo]:
    """Installed plugins with their distribution, version, what they register, and load errors."""
    return list(get_registry().plugins.values())


def preprocess(config: TrainConfig, output_dir: str) -> PreprocessResult:
    """Format -> template -> tokenize, saved with ``datasets.DatasetDict.save_to_disk``
    plus ``report.json`` (and ``rejects.jsonl`` when records were skipped)."""
    from .data.preprocess import preprocess_to_disk
    from .preflight import preflight

    preflight(config)
    from .objectives import select_objective

    if select_objective(config).record_kind != "conversation":
        from .errors import ConfigError

        raise ConfigError(f"airo preprocess prepares conversations; --objective {config.run.objective} reads "
                          "preference records, which `airo train` prepares itself (they are not cached yet)")
    return preprocess_to_disk(config, output_dir)


def preview(config: TrainConfig, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` training examples, with each token marked trained or masked."""
    from .data.preview import preview_examples
    from .preflight import preflight

    preflight(config)
    from .objectives import select_objective

    if select_objective(config).record_kind != "conversation":  # preference data: each pair's replies
        from .preference import preview_pairs

        return preview_pairs(config, n)
    return preview_examples(config, n)


def train(config: TrainConfig) -> TrainResult:
    """Run training and the post-training actions.

    A finished run (its working dir holds ``completed``) trains nothing: the result says so
    (``already_complete``, ``summary()``) and the summary is printed, as the CLI prints it.
    A command that differs from the finished run (options, data, base model, tokenizer,
    plugins) raises :class:`~airo.core.errors.ConfigError` naming what differs."""
    from .training import run_training

    result = run_training(config)
    if result.already_complete and result.is_main_process:
        print(result.summary(), flush=True)
    return result
