"""Run identity and the runs that must not end with exit 0: a resume onto another base
model, tokenizer, plugin version or option is refused naming what changed; a finished run
re-run with anything changed is an error; a run's length changes on resume only where the
learning-rate schedule allows it; a NaN/inf stops the run keeping the last good
checkpoint; a failed write mid-checkpoint leaves the run resumable (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLES

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


def _edit_in_place(path: Path, *, change: bool) -> None:
    """Rewrite ``path`` at the same size and mtime: one byte flipped (``change``) or the same bytes."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    if change:
        middle = len(data) // 2
        data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


# -- a base model folder that looks real to the identity (nothing here loads it) -------------------

def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (folder / "generation_config.json").write_text("{}")  # does not shape training
    (folder / "tokenizer.model").write_bytes(os.urandom(512))
    (folder / "tokenizer_config.json").write_text(json.dumps({"legacy": True}))
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "README.md").write_text("notes")  # does not shape training
    return folder


def _flags(model: Path, root: Path, *extra) -> list:
    return ["--model_name_or_path", model, "--output_dir", root / "out", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--bits", "16", *extra]


def _marked_checkpoint(work: Path, step: int, config, **fields) -> Path:
    from airo.core.atomic import stamp
    from airo.core.identity import run_identity
    from airo.core.training import CHECKPOINT_MARKER
    from airo.core.training.checkpoints import options_snapshot

    d = work / f"checkpoint-{step}"
    d.mkdir(parents=True)
    stamp(work, "working dir")
    stamp(d, "checkpoint")
    marker = {"global_step": step, "max_steps": 10, "config": options_snapshot(config),
              "identity": run_identity(config), **fields}
    (d / CHECKPOINT_MARKER).write_text(json.dumps(marker, default=str))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def _bump(monkeypatch, plugin: str):
    """The distribution shipping ``plugin`` is a version newer (the lookup, patched)."""
    from airo.core import identity

    real = identity.plugin_version

    def bumped(registry, name):
        distribution, version = real(registry, name)
        return (distribution, version + ".post1") if name == plugin else (distribution, version)

    monkeypatch.setattr(identity, "plugin_version", bumped)


# Each identity component: how to change it (change=True) or touch it without changing what it
# is (change=False: same bytes rewritten, a new mtime or the same one), and the phrase naming it.
def _weights(ctx, change):
    _edit_in_place(ctx["model"] / "model.safetensors", change=change)


def _weights_mtime_only(ctx, change):
    path = ctx["model"] / "model.safetensors"
    if change:
        _edit_in_place(path, change=True)
    else:
        os.utime(path, ns=(1, 1))  # only the time changes: still the same weights


def _shard_added(ctx, change):
    if change:
        (ctx["model"] / "model-00002-of-00002.safetensors").write_bytes(b"more")
    else:
        (ctx["model"] / "notes.txt").write_text("not a weight file")


def _config_json(ctx, change):
    path = ctx["model"] / "config.json"
    if change:
        path.write_text(json.dumps({"model_type": "llama", "hidden_size": 65}))
    else:
        path.write_text(path.read_text())


def _remote_code(ctx, change):
    (ctx["model"] / "modeling_custom.py").write_text("X = 1\n")  # unchanged: it was there from the start


def _tokenizer_model(ctx, change):
    _edit_in_place(ctx["model"] / "tokenizer.model", change=change)


def _tokenizer_config(ctx, change):
    path = ctx["model"] / "tokenizer_config.json"
    path.write_text(json.dumps({"legacy": False}) if change else path.read_text())


def _unshaping_files(ctx, change):
    # README, generation config: they do not shape training, so either way nothing changed
    (ctx["model"] / "README.md").write_text("other notes")
    (ctx["model"] / "generation_config.json").write_text('{"temperature": 0.1}')


def _plugin(name):
    def mutate(ctx, change):
        if change:
            _bump(ctx["monkeypatch"], name)
    return mutate


COMPONENTS = {
    # component: (mutation, phrase naming it when changed; None: never a change)
    "weights edited in place": (_weights, "the base model's weights changed: model.safetensors"),
    "weights: mtime alone": (_weights_mtime_only, "the base model's weights changed: model.safetensors"),
    "weights: a shard added": (_shard_added, "the base model's weights changed: "
                                             "model-00002-of-00002.safetensors added"),
    "config.json": (_config_json, "the base model's config changed: config.json"),
    "remote code": (_remote_code, "the base model's config changed: modeling_custom.py added"),
    "tokenizer.model": (_tokenizer_model, "the tokenizer changed: tokenizer.model"),
    "tokenizer_config.json": (_tokenizer_config, "the tokenizer changed: tokenizer_config.json"),
    "files that shape nothing": (_unshaping_files, None),
    "format plugin version": (_plugin("airoboros"), "the dataset format plugin changed: 'airoboros_chat' "
                                                    "(airo {v}) -> 'airoboros_chat' (airo {v}.post1)"),
    "template plugin version": (_plugin("airoboros"), "the prompt template plugin changed: 'llama-2'"),
    "loader plugin version": (_plugin("loaders"), "the model loader plugin changed: 'full' (airo {v}) -> "
                                                  "'full' (airo {v}.post1)"),
}


@pytest.mark.parametrize("change", [True, False], ids=["changed", "unchanged"])
@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_resume_refuses_another_identity_naming_it(component, change, tmp_path, airo_env, monkeypatch):
    """Every identity component x {changed, unchanged}: a changed one is refused naming it
    (and listed, not refused, for an explicit --resume_from_checkpoint); an unchanged one,
    touched as an editor or a copy would, resumes."""
    from airo.core import __version__
    from airo.core.errors import ConfigError
    from airo.core.identity import identity_changes, run_identity
    from airo.core.training.checkpoints import check_resume_identity

    model = _fake_model(tmp_path / "model")
    config = _config(*_flags(model, tmp_path, "--loader", "full"))
    mutate, phrase = COMPONENTS[component]
    ctx = {"model": model, "monkeypatch": monkeypatch}
    if component == "remote code" and not change:
        mutate(ctx, change)  # the file was there when the run started
    checkpoint = _marked_checkpoint(tmp_path / "work", 4, config)
    if not (component == "remote code" and not change):
        mutate(ctx, change)
    now = run_identity(config)
    changes = identity_changes(json.loads((checkpoint / "airo-checkpoint-complete.json").read_text())["identity"],
                               now)
    if change and phrase is not None:
        expected = phrase.format(v=__version__)
        assert any(c.startswith(expected) for c in changes), changes
        assert len(changes) == (2 if component == "format plugin version" or component == "template plugin version"
                                else 1), changes  # the airoboros plugin ships the format and its template
        with pytest.raises(ConfigError, match="another base model, tokenizer or plugin") as refused:
            check_resume_identity(checkpoint, now)
        assert expected in str(refused.value) and "\n" not in str(refused.value)
        assert "--resume_from_checkpoint" in str(refused.value) and "new --working_dir" in str(refused.value)
        assert check_resume_identity(checkpoint, now, explicit=True) == changes  # overridden, to be warned about
    else:
        assert changes == []
        assert check_resume_identity(checkpoint, now) == []


@pytest.mark.parametrize("change", [True, False], ids=["changed", "unchanged"])
def test_a_separate_tokenizer_folder_is_part_of_the_identity(change, tmp_path, airo_env):
    from airo.core.identity import identity_changes, run_identity

    model = _fake_model(tmp_path / "model")
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    config = _config(*_flags(model, tmp_path, "--tokenizer_name_or_path", tokenizer))
    before = run_identity(config)
    (tokenizer / "tokenizer.json").write_text('{"model": {"vocab": {"b": 0}}}' if change else
                                              '{"model": {"vocab": {"a": 0}}}')
    (model / "tokenizer.model").write_bytes(b"the model folder's tokenizer is not the one used")
    assert identity_changes(before, run_identity(config)) == (["the tokenizer changed: tokenizer.json"] if change
                                                              else [])


@pytest.mark.parametrize("change", [True, False], ids=["changed", "unchanged"])
def test_a_hub_model_is_identified_by_its_cached_commit(change, tmp_path, airo_env, monkeypatch):
    from airo.core.identity import identity_changes, run_identity

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    config = _config("--model_name_or_path", "someone/tiny", "--output_dir", tmp_path / "out")
    before = run_identity(config)
    assert before["model"] == {"hub": "someone/tiny", "revision": "a" * 40}
    if change:
        (repo / "refs" / "main").write_text("b" * 40)
    changes = identity_changes(before, run_identity(config))
    assert changes == ([f"the base model's Hub revision changed: {'a' * 40} -> {'b' * 40}",
                        f"the tokenizer's Hub revision changed: {'a' * 40} -> {'b' * 40}"] if change else [])


@pytest.mark.parametrize("flag,value", [("--lora_r", "16"), ("--learning_rate", "1e-3"), ("--model_max_len", "64"),
                                        ("--prompt_template", "chatml"), ("--train_on_source", "true")])
def test_a_signal_option_changed_is_refused_and_its_default_is_not(flag, value, tmp_path, airo_env):
    from airo.core.errors import ConfigError
    from airo.core.training import check_resume_options

    model = _fake_model(tmp_path / "model")
    checkpoint = _marked_checkpoint(tmp_path / "work", 4, _config(*_flags(model, tmp_path)))
    with pytest.raises(ConfigError, match=f"{flag.lstrip('-')} .* -> .*new --working_dir"):
        check_resume_options(checkpoint, _config(*_flags(model, tmp_path, flag, value)))
    check_resume_options(checkpoint, _config(*_flags(model, tmp_path)))


def test_a_changed_base_model_is_refused_before_anything_loads(tmp_path, airo_env, capsys):
    """Through the run: the same command after the weights were edited in place (same size,
    same mtime) is refused naming the file; --resume_from_checkpoint resumes, loudly."""
    from airo.core.errors import ConfigError
    from airo.core.training import run_training
    from airo.core.training.recipe import _resume_point

    model = _fake_model(tmp_path / "model")
    flags = _flags(model, tmp_path, "--working_dir", tmp_path / "work")
    checkpoint = _marked_checkpoint(tmp_path / "work", 4, _config(*flags))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        (checkpoint / name).write_bytes(b"x")
    _edit_in_place(model / "model.safetensors", change=True)
    with pytest.raises(ConfigError, match=r"the base model's weights changed: model\.safetensors"):
        run_training(_config(*flags))  # the fake model would fail to load: nothing was loaded
    config = _config(*flags, "--resume_from_checkpoint", checkpoint)
    resume, _, notes = _resume_point(config, tmp_path / "work", None)
    out = capsys.readouterr().out
    assert resume == checkpoint
    assert "WARNING: --resume_from_checkpoint" in out and "- the base model's weights changed: model.safetensors" in out
    assert any("resumed across changes" in n and "model.safetensors" in n for n in notes)


def test_identity_hashes_each_file_once_per_process(tmp_path, airo_env, monkeypatch):
    """The completed check, the resume check and the markers share one read of the weights;
    an edit (it changes the file's ctime) is read again."""
    from airo.core import fingerprint
    from airo.core.identity import run_identity

    model = _fake_model(tmp_path / "model")
    config = _config(*_flags(model, tmp_path))
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        if str(path).endswith("model.safetensors"):
            reads.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "open", counting_open, raising=False)
    first = run_identity(config)
    assert run_identity(config) == first and len(reads) == 1
    _edit_in_place(model / "model.safetensors", change=False)
    run_identity(config)
    assert len(reads) == 2


# -- a finished run --------------------------------------------------------------------------------

def _finished(tmp_path: Path, config) -> Path:
    from airo.core.atomic import stamp
    from airo.core.fingerprint import dataset_content_hash
    from airo.core.identity import run_identity
    from airo.core.training import COMPLETED_FILE
    from airo.core.training.checkpoints import options_snapshot

    work = Path(config.working_dir)
    work.mkdir(parents=True)
    stamp(work, "working dir")
    (work / COMPLETED_FILE).write_text(json.dumps({
        "global_step": 42, "outputs": {"adapter": str(tmp_path / "out")}, "config": options_snapshot(config),
        "data": {"content_hash": dataset_content_hash(config.data.dataset)}, "identity": run_identity(config)},
        default=str))
    return work


def _edit_data(ctx):
    data = ctx["data"]
    text = data.read_text()
    data.write_text(text.replace(" the ", " tha ", 1))


FINISHED_CHANGES = {
    "unchanged": ([], None, None),
    "an option": (["--lora_r", "16"], None, r"options: lora_r \(64 -> 16\)"),
    "the length": (["--num_train_epochs", "5"], None, r"options: num_train_epochs \(3 -> 5"),
    "a logging option": (["--logging_steps", "7"], None, r"options: logging_steps"),
    "the data": ([], _edit_data, r"the dataset's content \(sha256"),
    "the base model": ([], lambda ctx: _edit_in_place(ctx["model"] / "model.safetensors", change=True),
                       r"the base model's weights changed: model\.safetensors"),
    "the tokenizer": ([], lambda ctx: _edit_in_place(ctx["model"] / "tokenizer.model", change=True),
                      r"the tokenizer changed: tokenizer\.model"),
    "a plugin's version": ([], lambda ctx: _bump(ctx["monkeypatch"], "airoboros"),
                           r"the dataset format plugin changed"),
}


@pytest.mark.parametrize("what", sorted(FINISHED_CHANGES))
def test_a_finished_run_rerun_with_anything_changed_is_an_error(what, tmp_path, airo_env, monkeypatch, capsys):
    """`airo train` on a finished run: the same command says it is complete and exits 0;
    anything changed exits 2 with one line: complete, what differs, how to start anew. The
    finished run's files are untouched either way."""
    from airo.core import api, cli

    model = _fake_model(tmp_path / "model")
    data = tmp_path / "data.json"
    shutil.copy(CONVERSATIONS, data)
    flags = [str(f) for f in _flags(model, tmp_path, "--working_dir", tmp_path / "work")]
    flags[flags.index("--dataset") + 1] = str(data)
    work = _finished(tmp_path, _config(*flags))
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    extra, mutate, expected = FINISHED_CHANGES[what]
    if mutate is not None:
        mutate({"model": model, "data": data, "monkeypatch": monkeypatch})
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", *flags, *extra])
    out, err = capsys.readouterr()
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    if expected is None:
        assert exited.value.code == 0, err
        assert "already complete (step 42)" in out and err.strip() == ""
        assert out.count("already complete") == 1  # printed once, by the API
        capsys.readouterr()
        result = api.train(_config(*flags))  # the Python API says it too
        assert result.already_complete and "already complete (step 42)" in capsys.readouterr().out
        return
    assert exited.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "is already complete (step 42" in lines[0] and "differs from it" in lines[0]
    assert "use a new --working_dir" in lines[0]
    import re

    assert re.search(expected, lines[0]), lines[0]


def test_extending_a_finished_run_says_how(tmp_path, airo_env):
    from airo.core.errors import ConfigError
    from airo.core.training import run_training

    model = _fake_model(tmp_path / "model")
    flags = _flags(model, tmp_path, "--working_dir", tmp_path / "work")
    work = _finished(tmp_path, _config(*flags))
    _marked_checkpoint(work, 42, _config(*flags))
    with pytest.raises(ConfigError, match=r"to extend the finished run instead, remove .*completed: the re-run "
                                          r"resumes from checkpoint-42"):
        run_training(_config(*flags, "--max_steps", "100"))
    with pytest.raises(ConfigError) as other:  # not only the length: no such hint
        run_training(_config(*flags, "--max_steps", "100", "--lora_r", "4"))
    assert "to extend" not in str(other.value)


# -- the run's length --------------------------------------------------------------------------------

def _oracle(kind: str, warmup: int, total: int, step: int) -> float:
    """The learning-rate factor of transformers' schedules, from their definitions."""
    if kind == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))  # cosine


def test_a_schedule_may_change_length_exactly_when_it_gives_the_same_rates(airo_env):
    """Generated: schedule x warmup (steps, ratio) x steps trained x (old, new) length: the
    resume is allowed exactly when both lengths give every step trained and the next one
    the same learning rate (checked against the schedules' definitions)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from airo.core.training.checkpoints import schedule_mismatch

    cases = 0
    for kind in ("constant", "constant_with_warmup", "linear", "cosine"):
        for warmup in (0, 3, 0.25):
            args = SimpleNamespace(lr_scheduler_type=kind, lr_scheduler_kwargs={}, warmup_steps=warmup,
                                   learning_rate=1e-3)
            args.get_warmup_steps = lambda total, a=args: TrainingArguments.get_warmup_steps(a, total)
            for old, new in ((12, 24), (12, 8), (12, 12), (24, 12)):
                for trained in (0, 1, 2, 3, 5, 7):
                    w_old, w_new = args.get_warmup_steps(old), args.get_warmup_steps(new)
                    same = all(math.isclose(_oracle(kind, w_old, old, s), _oracle(kind, w_new, new, s),
                                            rel_tol=1e-12, abs_tol=1e-15) for s in range(trained + 1))
                    problem = schedule_mismatch(args, trained, old, new)
                    assert (problem is None) == same, (kind, warmup, old, new, trained, problem)
                    if problem:
                        assert f"--lr_scheduler_type {kind}" in problem and f"plans {new} steps" in problem
                    cases += 1
    assert cases == 288


@pytest.mark.parametrize("kind,allowed", [("constant", True), ("constant_with_warmup", True), ("linear", False),
                                          ("cosine", False), ("polynomial", False)])
def test_a_longer_max_steps_is_checked_before_anything_loads(kind, allowed, tmp_path, airo_env):
    from airo.core.errors import ConfigError
    from airo.core.training.recipe import _resume_point

    model = _fake_model(tmp_path / "model")
    flags = _flags(model, tmp_path, "--working_dir", tmp_path / "work", "--lr_scheduler_type", kind,
                   "--warmup_steps", "2", "--max_steps", "10")
    checkpoint = _marked_checkpoint(tmp_path / "work", 4, _config(*flags))
    longer = _config(*flags, "--max_steps", "20")
    if allowed:
        assert _resume_point(longer, tmp_path / "work", None)[0] == checkpoint
    else:
        with pytest.raises(ConfigError, match=r"cannot resume .*checkpoint-4 with another length: this command plans "
                                              r"20 steps and the run was planned for 10 \(4 trained\).*would match "
                                              r"no run of 20 steps"):
            _resume_point(longer, tmp_path / "work", None)
    assert _resume_point(_config(*flags), tmp_path / "work", None)[0] == checkpoint  # the same length resumes


# -- NaN/inf -----------------------------------------------------------------------------------------

def test_nonfinite_weights_names_the_first_trainable_one():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    from airo.core.training.callbacks import nonfinite_weights

    assert nonfinite_weights(model) is None
    model[0].weight.requires_grad_(False)
    for value in (float("nan"), float("inf"), -float("inf")):
        with torch.no_grad():
            model[0].weight[1, 2] = value  # frozen: not the run's to check
        assert nonfinite_weights(model) is None
        with torch.no_grad():
            model[1].bias[0] = value
        assert nonfinite_weights(model) == "1.bias"
        with torch.no_grad():
            model[1].bias[0] = 0.0
    with torch.no_grad():  # huge but finite bf16 values are finite: the sum is taken in float64
        model.to(torch.bfloat16)[1].weight.fill_(3e38)
    assert nonfinite_weights(model) is None


@pytest.mark.parametrize("loss,norm,skipped,expected", [
    (1.5, 0.3, False, None),
    (float("nan"), 0.3, False, "the training loss is nan"),
    (float("inf"), 0.3, False, "the training loss is inf"),
    (1.5, float("nan"), False, "the gradient norm is nan"),
    (1.5, float("inf"), False, "the gradient norm is inf"),
    (1.5, float("inf"), True, None),  # the fp16 loss scaler skipped the step: its business
    (1.5, None, False, None),  # no gradient norm computed
])
def test_the_guard_reads_each_steps_loss_and_gradient_norm(loss, norm, skipped, expected):
    import torch

    from airo.core.training.callbacks import FiniteGuard

    class Trainer:
        accelerator = type("Accelerator", (), {"optimizer_step_was_skipped": skipped})()

        def training_step(self, model, inputs, n=None):
            return torch.tensor(inputs)

        def _get_grad_norm(self, model, grad_norm=None):
            return None if norm is None else torch.tensor(norm)

    trainer = Trainer()
    guard = FiniteGuard(trainer)
    for micro in (0.5, loss):  # two micro-batches, the second one's loss as given
        trainer.training_step(None, micro)
    trainer._get_grad_norm(None)
    assert guard.problem() == expected
    assert guard.problem() is None  # each step is read once


# -- end to end (seconds of training each) -----------------------------------------------------------

def _small_flags(model, root: Path, *extra) -> list:
    return ["--model_name_or_path", model, "--output_dir", root / "out", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--max_train_samples", "8",
            "--eval_dataset_size", "0", "--num_train_epochs", "1", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--bits", "16", "--lora_r", "4", "--lora_dropout", "0.0",
            "--logging_steps", "1", "--report_to", "none", *map(str, extra)]


def _airo_train(capsys, *flags) -> tuple[int, str, str]:
    from airo.core import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", *map(str, flags)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def _errors(err: str) -> list[str]:
    """The error lines on stderr (progress bars share it, ending in carriage returns)."""
    import re

    return re.findall(r"error: [^\r\n]*", err)


def _adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "out" / "adapter_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _diverge_at(airo_plugin, step: int) -> None:
    """The optimizer step of ``step`` overflows the trainable weights, as ``--learning_rate
    1e308`` did before learning rates were bounded (a plugin callback, after the step)."""
    import torch

    from airo.core import hookimpl

    class Diverge:
        @hookimpl
        def register_callbacks(self, register):
            def factory(ctx):
                from transformers import TrainerCallback

                class Overflow(TrainerCallback):
                    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
                        if state.global_step + 1 == step:  # counted once the step ends
                            with torch.no_grad():
                                for param in model.parameters():
                                    if param.requires_grad:
                                        param.add_(torch.sign(param) * 1e38).mul_(1e30)

                return Overflow()

            register("overflow", factory, description="the weights overflow at one step")

    airo_plugin(Diverge(), name="diverge-plugin")


@pytest.mark.slow
@pytest.mark.parametrize("save_steps,step,what", [
    ("1", 2, r"the trainable weights are not finite \(base_model\.model\..*lora_"),  # caught before its save
    ("100", 3, r"the training loss is (nan|inf)"),  # no save at step 2: the next loss is not finite
])
def test_weights_that_overflow_stop_the_run(save_steps, step, what, tiny_model_dir, tmp_path, airo_env, airo_plugin,
                                            capsys):
    """Step 1 is finite (and checkpointed), then step 2's optimizer step overflows the
    weights. The run stops at once: exit 1, one line naming the step and the value, the last
    good checkpoint complete, no `completed`, no output, no post-training action."""
    import re

    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    _diverge_at(airo_plugin, 2)
    work = tmp_path / "out-checkpoints"
    code, out, err = _airo_train(capsys, *_small_flags(tiny_model_dir, tmp_path, "--max_steps", "3",
                                                       "--save_steps", save_steps))
    lines = _errors(err)
    assert code == 1 and len(lines) == 1, err
    assert re.search(rf"^error: training diverged at step {step}: {what}", lines[0]), lines[0]
    assert "no output was written" in lines[0] and "new --working_dir" in lines[0]
    assert "Traceback" not in err and "post-training action" not in out
    assert not (work / "completed").exists() and not (tmp_path / "out").exists()
    newest, incomplete = find_resume_checkpoint(work)
    if save_steps == "1":
        assert newest == work / "checkpoint-1" and incomplete == []  # step 2 was never written
        assert "the last complete checkpoint, " + str(work / "checkpoint-1") + ", is kept" in lines[0]
        from safetensors.torch import load_file

        weights = load_file(work / "checkpoint-1" / "adapter_model.safetensors")
        assert all(bool(t.isfinite().all()) for t in weights.values())
        assert json.loads((work / "checkpoint-1" / CHECKPOINT_MARKER).read_text())["global_step"] == 1
    else:
        assert newest is None and "no checkpoint was complete yet" in lines[0]


@pytest.mark.slow
def test_weights_that_overflow_on_the_last_step_never_mark_its_checkpoint(tiny_model_dir, tmp_path, airo_env,
                                                                         airo_plugin, capsys):
    """--max_steps 1: the loss and the gradient of step 1 are finite, the weights after it
    are not; the final checkpoint is never marked complete and nothing is output."""
    from airo.core.training import find_resume_checkpoint

    _diverge_at(airo_plugin, 1)
    code, _, err = _airo_train(capsys, *_small_flags(tiny_model_dir, tmp_path, "--max_steps", "1"))
    assert code == 1 and "training diverged at step 1: the trainable weights are not finite" in err, err
    work = tmp_path / "out-checkpoints"
    assert find_resume_checkpoint(work) == (None, [])
    assert not (work / "completed").exists() and not (tmp_path / "out").exists()


def _fail_at_checkpoint_4(monkeypatch, where: str) -> None:
    """OSError(ENOSPC) while writing the run's 2nd checkpoint, ``where`` in it."""
    import torch

    from airo.core.training import CHECKPOINT_MARKER, callbacks

    def enospc(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def in_4(path) -> bool:
        return Path(path).parent.name == "checkpoint-4"

    if where == "stamp":
        real_stamp = callbacks.stamp

        def stamp(folder, kind, *args, **kwargs):
            if Path(folder).name == "checkpoint-4":
                raise enospc(Path(folder) / ".airo-owned")
            return real_stamp(folder, kind, *args, **kwargs)

        monkeypatch.setattr(callbacks, "stamp", stamp)
    elif where == "optimizer":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and in_4(f) and Path(f).name == "optimizer.pt":
                Path(f).write_bytes(b"\0" * 100)  # half written when the disk filled up
                raise enospc(f)
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)
    elif where == "marker":
        real_write = callbacks.write_json

        def write_json(path, data):
            if Path(path).name == CHECKPOINT_MARKER and in_4(path):
                raise enospc(path)
            return real_write(path, data)

        monkeypatch.setattr(callbacks, "write_json", write_json)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["stamp", "optimizer", "marker"])
def test_a_full_disk_mid_checkpoint_leaves_the_run_resumable(where, tiny_model_dir, tmp_path, airo_env, capsys,
                                                             monkeypatch):
    """The disk fills up while the 2nd checkpoint (step 4) is written: one line says which
    failed and that checkpoint-2 is complete; the same command then resumes from it and ends
    as the uninterrupted run does."""
    from airo.core.training import find_resume_checkpoint, read_completed

    code, _, err = _airo_train(capsys, *_small_flags(tiny_model_dir, tmp_path / "ref", "--save_steps", "2"))
    assert code == 0, err
    reference = _adapter(tmp_path / "ref")

    flags = _small_flags(tiny_model_dir, tmp_path / "run", "--save_steps", "2")
    work = tmp_path / "run" / "out-checkpoints"
    with monkeypatch.context() as patch:
        _fail_at_checkpoint_4(patch, where)
        code, _, err = _airo_train(capsys, *flags)
    lines = _errors(err)
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: writing checkpoint-4 failed: No space left on device"), lines[0]
    assert ("checkpoint-2 is complete: free some space, then re-run the same command to resume from it"
            in lines[0]), lines[0]
    assert find_resume_checkpoint(work) == (work / "checkpoint-2", [])  # the partial one is gone
    assert not (work / "completed").exists() and not (tmp_path / "run" / "out").exists()

    code, out, err = _airo_train(capsys, *flags)
    assert code == 0, err
    assert f"resuming from {work / 'checkpoint-2'} (step 2 of 4)" in out
    assert read_completed(work)["global_step"] == 4
    assert _max_diff(_adapter(tmp_path / "run"), reference) <= 1e-6


@pytest.mark.slow
def test_a_resume_may_change_length_only_where_the_schedule_allows(tiny_model_dir, tmp_path, airo_env, capsys):
    """constant_with_warmup past its warmup: 2 steps, then the same run resumed as 4 steps,
    equals 4 steps from the start. linear: a longer run (by epochs, known once the data is)
    is refused as training begins, before a step, naming the schedule."""
    from airo.core.training import COMPLETED_FILE

    constant = ("--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "1", "--save_steps", "2")
    code, _, err = _airo_train(capsys, *_small_flags(tiny_model_dir, tmp_path / "ref", *constant, "--max_steps", "4"))
    assert code == 0, err
    reference = _adapter(tmp_path / "ref")

    root = tmp_path / "run"
    code, _, err = _airo_train(capsys, *_small_flags(tiny_model_dir, root, *constant, "--max_steps", "2"))
    assert code == 0, err
    (root / "out-checkpoints" / COMPLETED_FILE).unlink()  # as if stopped at step 2 of a longer plan
    code, out, err = _airo_train(capsys, *_small_flags(tiny_model_dir, root, *constant, "--max_steps", "4"))
    assert code == 0, err
    assert "resuming from" in out and "(step 2 of 4)" in out
    assert _max_diff(_adapter(root), reference) <= 1e-6

    linear = ("--lr_scheduler_type", "linear", "--warmup_steps", "0", "--save_steps", "2")
    root = tmp_path / "linear"
    code, _, err = _airo_train(capsys, *_small_flags(tiny_model_dir, root, *linear))
    assert code == 0, err
    work = root / "out-checkpoints"
    (work / COMPLETED_FILE).unlink()
    code, out, err = _airo_train(capsys, *_small_flags(tiny_model_dir, root, *linear, "--num_train_epochs", "2"))
    assert code == 2 and len(_errors(err)) == 1, err
    assert "cannot resume" in err and "this command plans 8 steps and the run was planned for 4" in err
    assert "--lr_scheduler_type linear" in err
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_a_real_resume_onto_edited_weights_is_refused_and_the_override_is_loud(tiny_model_dir, tmp_path, airo_env,
                                                                               capsys):
    from airo.core.training import COMPLETED_FILE

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    flags = _small_flags(model, tmp_path, "--max_steps", "2", "--save_steps", "1")
    code, _, err = _airo_train(capsys, *flags)
    assert code == 0, err
    work = tmp_path / "out-checkpoints"
    (work / COMPLETED_FILE).unlink()
    (work / "checkpoint-2" / "airo-checkpoint-complete.json").unlink()  # as if killed while saving step 2
    _edit_in_place(model / "model.safetensors", change=True)
    code, out, err = _airo_train(capsys, *flags)
    assert code == 2 and "the base model's weights changed: model.safetensors" in err, err
    assert "Loading weights" not in err and "resuming" not in out
    code, out, err = _airo_train(capsys, *flags, "--resume_from_checkpoint", work / "checkpoint-1")
    assert code == 0, err
    assert "WARNING:   - the base model's weights changed: model.safetensors" in out
    assert "resumed across changes to what" in out
    # finished: the plain command says so and exits 0 (the data as read and the identity as
    # recorded agree with what the re-run computes); edited weights again: an error
    code, out, err = _airo_train(capsys, *flags)
    assert code == 0 and "already complete (step 2)" in out, err
    _edit_in_place(model / "model.safetensors", change=True)
    code, out, err = _airo_train(capsys, *flags)
    assert code == 2 and "already complete" in err and "the base model's weights changed: model.safetensors" in err
