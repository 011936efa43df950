"""The ``airo`` command line: a thin layer over ``airo.core.api``."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings

import click

from .version import __version__
from .console import show_warning
from .errors import AiroError
from .plugins import KINDS, PluginCallError, describe_exception, get_plugin_manager, out_of_memory, stdout_to_stderr

RUN_SETTINGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def _split_config(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    args = list(args)
    if args and not args[0].startswith("-"):
        return args[0], args[1:]
    return None, args


def _config_from(args: tuple[str, ...], include_training: bool = True):
    from . import api

    config_file, argv = _split_config(args)
    config = api.load_config(config_file, argv, include_training=include_training)
    for message in config.warnings:
        click.secho(f"warning: {message}", fg="yellow", err=True)
    return config


def _print_options(include_training: bool) -> None:
    from .config import describe_flags
    from .plugins import get_registry

    titles = {"model": "model", "data": "data", "run": "outputs and post-training"}
    for name, entry in get_registry().options.items():  # plugins' own options, under their section
        titles[name] = f"{name} (plugin {entry.plugin}" + (f": {entry.description})" if entry.description else ")")
    titles["training"] = "training (transformers.TrainingArguments, seed defaults applied)"
    from .options import DERIVED_DEFAULTS

    flags = describe_flags(include_training)
    for section, title in titles.items():
        chosen = [f for f in flags if f.section == section]
        if chosen:
            click.echo(f"\n{title}:")
        for flag in chosen:
            help_text = " ".join(str(flag.help).split())
            derived = DERIVED_DEFAULTS.get(flag.name) if section == "training" else None
            default = derived if derived is not None else repr(flag.default)
            click.echo(f"  --{flag.name} (default: {default})\n      {help_text}")


def _help_all(include_training: bool):
    def callback(ctx, _param, value):
        if value and not ctx.resilient_parsing:
            _print_options(include_training)
            ctx.exit(0)
    return click.option("--help-all", is_flag=True, expose_value=False, is_eager=True, callback=callback,
                        help="List every option (airo's and transformers.TrainingArguments').")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="airo")
def cli():
    """airo: fine-tune large language models with QLoRA, LoRA or full fine-tuning.

    Options come from defaults, then a YAML file, then flags (the seed script's
    underscore spelling; dashes work too).
    """


@cli.command(context_settings=RUN_SETTINGS)
@_help_all(True)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Train: airo train [CONFIG.yaml] [--flag value ...].

    Takes the seed script's flags (e.g. --model_name_or_path, --dataset, --dataset_format,
    --output_dir, --bits, --lora_r, --num_train_epochs) and every TrainingArguments field;
    --help-all lists them all with their defaults.
    """
    from . import api
    from .console import configure_output, hidden_warnings, wants_verbose
    from .launchers import apply_slurm_environment, check_launcher
    from .training.dist import leave_process_group

    apply_slurm_environment()  # srun's tasks, without torchrun: ranks from SLURM_* variables
    configure_output(verbose=wants_verbose(args))  # airo's lines from rank 0; libraries quiet
    check_launcher()  # accelerate asked for N processes and started 1: stop before anything loads
    result = api.train(_config_from(args))
    if getattr(result, "is_main_process", True) and hidden_warnings():
        click.echo(f"[airo] ({hidden_warnings()} library warning(s) hidden; --verbose shows them)", err=True)
    leave_process_group()  # the command owns the run's processes; the Python API leaves the caller's group alone
    summary = result.summary()
    if summary and not getattr(result, "already_complete", False):  # empty on the worker ranks; api.train printed a finished run's
        click.echo(summary)


@cli.command(context_settings=RUN_SETTINGS)
@_help_all(True)
@click.option("--output", "-o", required=True, help="Folder to write.")  # checked by airo: one line
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def preprocess(output, args):
    """Tokenize a dataset into a reusable folder: airo preprocess [CONFIG] [flags] --output DIR."""
    from . import api

    result = api.preprocess(_config_from(args), output)
    click.echo(result.summary())


@cli.command(context_settings=RUN_SETTINGS)
@_help_all(True)
@click.option("-n", "count", default=3, show_default=True, help="How many examples.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of coloured text.")
@click.option("--plain/--color", "plain", default=None,
              help="Mark trained tokens [[like this]] instead of colours (the default when not on a terminal).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def preview(count, as_json, plain, args):
    """Show rendered examples, trained tokens in green, masked tokens dimmed."""
    from . import api
    from .data.preview import print_preview

    if as_json:  # plugin code (formats, templates) runs while reading: what it prints goes to stderr
        with stdout_to_stderr():
            examples = api.preview(_config_from(args), count)
    else:
        examples = api.preview(_config_from(args), count)
    if as_json:
        click.echo(json.dumps(examples, ensure_ascii=False, indent=2))
    else:
        print_preview(examples, plain=plain)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_command(as_json):
    """Installed plugins: distribution, version and what each registers."""
    from . import api

    infos = api.plugins()
    if as_json:
        click.echo(json.dumps([vars(i) for i in infos], indent=2))
        return
    for info in infos:
        state = " [blocked]" if info.blocked else (f" [FAILED: {info.error}]" if info.error else "")
        click.echo(f"{info.name}  ({info.distribution} {info.version}){state}")
        for kind, names in info.provides.items():
            click.echo(f"    {kind}: {', '.join(names)}")


@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS), required=False)
@click.option("--json", "as_json", is_flag=True)
def list_command(kind, as_json):
    """List what plugins registered: formats, templates, loaders, actions, patches, options,
    evaluations, callbacks (all of them without KIND)."""
    from . import api

    registry = api.registry()
    kinds = [kind] if kind else list(KINDS)
    tables = {k: _list_rows(registry.kind(k), k) for k in kinds}
    if as_json:
        click.echo(json.dumps(tables[kind] if kind else tables, indent=2))
        return
    for k, rows in tables.items():
        if not kind:
            click.secho(f"{k}:", bold=True)
        width = max((len(r["name"]) for r in rows), default=0)
        for row in rows:
            extra = f" [template: {row['default_template']}]" if row.get("default_template") else ""
            click.echo(f"{'  ' if not kind else ''}{row['name']:<{width}}  {row['description']}{extra}  "
                       f"({row['plugin']})")


def _list_rows(table: dict, kind: str) -> list[dict]:
    rows = []
    for name in sorted(table):
        entry = table[name]
        row = {"name": name, "plugin": entry.plugin, "description": entry.description}
        if kind == "formats":
            row["default_template"] = entry.default_template
        rows.append(row)
    return rows


# What airo itself defines; plugin commands are added to these on each run of main().
_CORE_COMMANDS = dict(cli.commands)


def _add_plugin_commands() -> None:
    # Start from airo's own commands, so a plugin can be told apart from them (and a
    # second main() in one process does not see the first one's plugin commands).
    cli.commands.clear()
    cli.commands.update(_CORE_COMMANDS)
    get_plugin_manager().add_commands(cli)  # a failing plugin costs a warning naming it (strict: an error)


def _debug() -> bool:
    return os.environ.get("AIRO_DEBUG", "").lower() in ("1", "true", "yes")


def _command(argv: list[str]) -> str:
    """``airo COMMAND``, as far as the arguments say (for messages about what was being done)."""
    return " ".join(["airo"] + [a for a in argv if not a.startswith("-")][:1])


def _os_error(exc: OSError, argv: list[str]) -> str:
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    reason = exc.strerror or describe_exception(exc)
    return f"{_command(argv)}: {where}: {reason}" if where is not None else f"{_command(argv)}: {reason}"


def _out_of_memory(exc: BaseException) -> str:
    which = "memory" if isinstance(exc, MemoryError) else "accelerator memory"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of {which} ({first}); for training, lower --per_device_train_batch_size or --model_max_len, "
            "or add --gradient_checkpointing")


def _fail(message: str, code: int) -> None:
    """Print one error line and exit. Every rank of a distributed run reports its own
    error, so ranks other than 0 say which they are."""
    if _debug():
        traceback.print_exc()
    rank = os.environ.get("RANK", "0")
    prefix = f"[rank {rank}] " if rank not in ("", "0") else ""
    click.secho(f"{prefix}{message}", fg="red", err=True)
    sys.exit(code)


# Library messages that say nothing a user can act on: deprecations inside transformers and
# peft's own calls, DeepSpeed choosing its accelerator, bitsandbytes' optional CPU kernels.
# Real warnings still show.
NOISE = (
    r".*`?is_gradient_checkpointing`? is deprecated.*",
    r".*`?gradient_checkpointing_enable`? is deprecated.*",
    r".*`?gradient_checkpointing_disable`? is deprecated.*",
)
QUIET_LOGGERS = {"bitsandbytes.backends.cpu.ops": logging.ERROR, "DeepSpeed": logging.WARNING}


def quiet_known_noise() -> None:
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # "Saving the dataset" bars on every run


def main(argv: list[str] | None = None) -> None:
    warnings.showwarning = show_warning
    quiet_known_noise()
    argv = sys.argv[1:] if argv is None else list(argv)
    hint = "" if _debug() else "set AIRO_DEBUG=1 for the traceback"
    try:
        _add_plugin_commands()
        cli.main(args=argv, prog_name="airo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if _debug():
            traceback.print_exc()
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C inside a command into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _fail("interrupted", 130)
        _fail("Aborted.", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except PluginCallError as exc:
        # a plugin's bug: its author needs the traceback
        _fail(f"error: {exc}" + (f" ({hint})" if hint else ""), exc.exit_code)
    except AiroError as exc:
        _fail(f"error: {exc}", exc.exit_code)
    except OSError as exc:
        _fail(f"error: {_os_error(exc, argv)}", 1)
    except Exception as exc:  # noqa: BLE001 - the user gets one line; AIRO_DEBUG=1 the traceback
        if out_of_memory(exc):
            _fail(f"error: {_out_of_memory(exc)}", 1)
        _fail(f"error: internal error: {describe_exception(exc)} ({hint + '; ' if hint else ''}please report it)", 1)
    sys.exit(0)
