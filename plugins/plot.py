"""The built-in ``plot`` plugin: ``airo plot WORKING_DIR`` redraws ``loss.png`` from the
``metrics.jsonl`` a run keeps in its working dir (during training or after it)."""

from __future__ import annotations

from pathlib import Path

import click

from airo.core import ConfigError, hookimpl


def plot_working_dir(working_dir: str, out: str | None = None) -> tuple[Path, int, int]:
    """Draw ``working_dir/metrics.jsonl`` into ``out`` (default ``working_dir/loss.png``);
    returns (the image, train points, eval points). ConfigError when there is nothing to draw."""
    from airo.core import METRICS_FILE, PLOT_FILE, MetricsLog, loss_points, plot_metrics

    folder = Path(working_dir)
    if not folder.is_dir():
        raise ConfigError(f"airo plot: {working_dir} is not a folder; give the working dir of a run "
                          "(--working_dir, default OUTPUT_DIR-checkpoints)")
    log = MetricsLog(folder / METRICS_FILE)
    if not log.path.is_file():
        raise ConfigError(f"airo plot: no {METRICS_FILE} in {working_dir}; it is written there while `airo train` "
                          "runs, so give the run's working dir (--working_dir, default OUTPUT_DIR-checkpoints)")
    records = log.read()
    if not records:
        raise ConfigError(f"airo plot: {log.path} holds no logged step yet; wait for the first logging step "
                          "(--logging_steps) and run it again")
    train, evals = loss_points(records)
    if not train and not evals:
        raise ConfigError(f"airo plot: {log.path} has {len(records)} logged step(s) but no loss or eval_loss values "
                          "to draw")
    target = Path(out) if out else folder / PLOT_FILE
    if target.is_dir():
        target = target / PLOT_FILE
    return plot_metrics(records, target), len(train), len(evals)


def next_steps(result) -> list[str]:
    """Where the loss curve of a finished run is, and how to redraw it."""
    import shlex

    from airo.core import PLOT_FILE

    return [f"loss curve:       {Path(result.working_dir) / PLOT_FILE} (`airo plot {shlex.quote(result.working_dir)}`)"]


@hookimpl
def register_next_steps(register):
    register("loss-curve", next_steps, order=200, description="where loss.png is, and airo plot")


@hookimpl
def register_commands(cli):
    @cli.command("plot")
    @click.argument("working_dir", type=click.Path(file_okay=False))
    @click.option("--out", default=None, type=click.Path(),
                  help="Where to write the PNG (default: WORKING_DIR/loss.png).")
    def plot_command(working_dir, out):
        """Redraw loss.png (train and eval loss against the step) from WORKING_DIR/metrics.jsonl."""
        path, train, evals = plot_working_dir(working_dir, out)
        click.echo(f"wrote {path} ({train} train and {evals} eval loss points)")
