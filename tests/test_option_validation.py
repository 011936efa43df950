"""Every option is checked before anything loads, and the attacks are generated from the
option table itself (``airo.core.flags.all_flags``: airo's own options, every
TrainingArguments field, every plugin's ``register_options``), never from a hand list:

- every numeric option x {0, -1, huge, nan, inf, wrong type, empty} and both sides of each
  bound it declares, given as a flag and as a YAML key;
- every name-valued option (choices, registered names) x {misspelt, empty}, and every
  accepted name;
- every boolean flag misspelt: "did you mean" names it.

The expectation comes from the declared constraint, read by an oracle written here (not by
the code under test). A rejected value must exit 2 with exactly one line naming the flag
(or the YAML file, line and key), the value and the accepted range, no traceback, no
"internal error", and the run never starts (``api.train`` is not reached; a subprocess
running the whole matrix never imports torch).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airo.core import ConfigError, hookimpl
from airo.core.config import build_config
from airo.core.flags import INT64, _strip_optional, all_flags, constraint_of, is_bool_flag
from airo.core.options import closest

from conftest import EXAMPLES, REPO

FLAGS = all_flags()
MODEL = str(EXAMPLES / "tiny-llama")
DATA = str(EXAMPLES / "data" / "conversations.json")


def _kind(flag):
    return _strip_optional(flag.type)


def _named(flag) -> bool:
    c = constraint_of(flag)
    return c is not None and bool(c.choices or c.registry)


NUMERIC = [f for f in FLAGS.values() if _kind(f) in (int, float) and not is_bool_flag(f) and not _named(f)]
NAMED = [f for f in FLAGS.values() if _named(f)]
BOOLEAN = [f for f in FLAGS.values() if is_bool_flag(f)]
ATTACKS = ["0", "-1", "1e308", str(2 ** 63), str(-(2 ** 63) - 1), "nan", "inf", "-inf", "abc", "1.5", "", "none"]


# -- the oracle: what a declared constraint accepts -------------------------------------------

def _optional(flag) -> bool:
    return flag.default is None or type(None) in typing.get_args(flag.type)


def _unsets(flag, text: str) -> bool:
    """``none``/``null`` unsets an optional number."""
    return _optional(flag) and text.strip().lower() in ("none", "null")


def parse(flag, text: str):
    """The number ``text`` means for ``flag``, or None when it is not one of its type (or unsets it)."""
    try:
        value = int(text) if _kind(flag) is int else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def accepts(flag, text: str) -> bool:
    if _unsets(flag, text):
        return True
    value = parse(flag, text)
    if value is None:
        return False
    c = constraint_of(flag)
    if c is None:
        return True  # a float without bounds: any finite number
    lo_ok = (c.min is None or value >= c.min) and (c.above is None or value > c.above)
    hi_ok = (c.max is None or value <= c.max) and (c.below is None or value < c.below)
    whole = not c.whole_from_1 or value < 1 or float(value) == int(value)
    return lo_ok and hi_ok and whole


def boundary_values(flag) -> list[str]:
    """Both sides of every bound the flag declares (ints a step of 1, floats a relative hair)."""
    c = constraint_of(flag)
    if c is None:
        return []
    integer = _kind(flag) is int
    out = []

    def near(b, sign):
        if integer:
            return str(int(b) + sign)
        return repr(b + sign * max(abs(b) * 1e-9, 1e-12))

    for bound in (c.min, c.above, c.max, c.below):
        if bound is not None:
            out += [str(int(bound)) if integer else repr(float(bound)), near(bound, -1), near(bound, +1)]
    if c.whole_from_1:
        out += ["1.5", "2", "0.5"]
    return list(dict.fromkeys(out))


def _label(flag, channel: str) -> str:
    return f"--{flag.name}" if channel == "flag" else f"line 3: {flag.name}"


# -- running airo in-process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("option-validation")


def _argv(workdir, flag_name: str, text: str, channel: str) -> list[str]:
    base = ["--output_dir", str(workdir / "out")]
    if channel == "flag":
        return ["train", "--model_name_or_path", MODEL, "--dataset", DATA, *base, f"--{flag_name}", text]
    path = workdir / f"{flag_name}.yaml"
    path.write_text(f"model_name_or_path: {MODEL}\ndataset: {DATA}\n{flag_name}: {json.dumps(text)}\n")
    return ["train", str(path), *base]


def run_airo(monkeypatch, capsys, argv: list[str]) -> tuple[int, str, list]:
    """``airo ARGV`` in this process: (exit code, stderr, the runs started)."""
    from airo.core import api
    from airo.core.cli import main

    started: list = []

    def no_run(config):  # a rejected option must never get this far: nothing loads after this
        started.append(config)
        raise SystemExit(99)

    monkeypatch.setattr(api, "train", no_run)
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err, started


def assert_one_line_error(code: int, err: str, started: list, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert not started, "the run started"
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# -- numbers -----------------------------------------------------------------------------------

NUMERIC_CASES = [(f.name, text, channel) for f in NUMERIC for text in ATTACKS for channel in ("flag", "yaml")
                 if not accepts(f, text)]
NUMERIC_CASES += [(f.name, text, "flag") for f in NUMERIC for text in boundary_values(f) if not accepts(f, text)]
NUMERIC_ACCEPTED = [(f.name, text) for f in NUMERIC for text in [*ATTACKS, *boundary_values(f)] if accepts(f, text)]


@pytest.mark.parametrize("name, text, channel", NUMERIC_CASES)
def test_a_bad_number_is_one_line_naming_the_flag_before_anything_loads(name, text, channel, workdir,
                                                                         monkeypatch, capsys):
    flag = FLAGS[name]
    code, err, started = run_airo(monkeypatch, capsys, _argv(workdir, name, text, channel))
    c = constraint_of(flag)
    accepted = c.describe() if c is not None else "finite"
    line = assert_one_line_error(code, err, started, _label(flag, channel), accepted)
    value = parse(flag, text)
    assert repr(text) in line or (value is not None and repr(value) in line), line


def _across_options(name: str, exc: ConfigError) -> bool:
    """A check of two options together (``--min_new_tokens`` above ``--max_new_tokens``):
    the message names another option too."""
    import re

    return any(re.search(rf"--{re.escape(other)}(?!\w)", str(exc)) for other in FLAGS if other != name)


@pytest.mark.parametrize("name, text", NUMERIC_ACCEPTED)
def test_a_number_the_constraint_allows_is_accepted(name, text):
    flag = FLAGS[name]
    try:
        config = build_config(None, [f"--{name}", text])
    except ConfigError as exc:  # its own range allows it; a rule across options may still refuse it
        assert _across_options(name, exc), exc
        return
    assert config.get(name) == (None if _unsets(flag, text) else pytest.approx(parse(flag, text)))


def test_every_bound_is_tested_from_both_sides():
    """Each declared bound yields an accepted and a rejected case (so a bound moved by one
    fails a test), and the famous three fail: batch 0, accumulation 0, learning rate < 0."""
    for flag in NUMERIC:
        values = boundary_values(flag)
        if values:
            assert any(accepts(flag, v) for v in values) and not all(accepts(flag, v) for v in values), flag.name
    for name, text in [("per_device_train_batch_size", "0"), ("gradient_accumulation_steps", "0"),
                       ("learning_rate", "-1"), ("learning_rate", "1e308"), ("seed", "-1")]:
        assert (name, text, "flag") in NUMERIC_CASES
    for name, text in [("max_steps", "0"), ("max_steps", "-1"), ("weight_decay", "0"), ("max_grad_norm", "0"),
                       ("eval_dataset_size", "0"), ("warmup_steps", "0"), ("dataloader_num_workers", "0")]:
        assert (name, text) in NUMERIC_ACCEPTED


def test_every_builtin_numeric_option_declares_its_range():
    """A new number (airo's, a built-in plugin's, a TrainingArguments field) without declared
    bounds fails here; third-party ones still get the 64-bit and finiteness checks."""
    from airo.core.plugins import get_registry

    registry = get_registry()
    for flag in NUMERIC:
        builtin = not flag.plugin or registry.plugins[flag.plugin].distribution == "airo"
        if builtin:
            assert flag.constraint is not None and flag.constraint.bounded, f"--{flag.name} declares no range"


def test_every_default_meets_its_own_constraint():
    from airo.core.flags import check_value

    for flag in FLAGS.values():
        check_value(flag, flag.default, f"default of --{flag.name}")


def test_an_int_without_declared_bounds_still_fits_64_bits(airo_plugin):
    @dataclass
    class Free:
        free_count: int = 0

    class Plugin:
        @hookimpl
        def register_options(self, register):
            register("free", Free)

    airo_plugin(Plugin())
    assert build_config(None, ["--free_count", str(INT64[1])]).get("free_count") == INT64[1]
    with pytest.raises(ConfigError, match=rf"--free_count must be at least -{2 ** 63} and at most {2 ** 63 - 1}"):
        build_config(None, ["--free_count", str(2 ** 63)])


# -- names -------------------------------------------------------------------------------------

def _accepted_names(flag) -> list[str]:
    c = constraint_of(flag)
    if c.registry:
        from airo.core.plugins import get_registry

        return [*c.extra, *get_registry().kind(c.registry)]
    return [str(x) for x in (*c.extra, *c.choices)]


def misspell(name: str) -> str:
    """A name one typo away: the middle letter of its longest word doubled."""
    import re

    word = max(re.finditer(r"[A-Za-z]+", name), key=lambda m: len(m.group()))
    middle = word.start() + len(word.group()) // 2
    return name[:middle] + name[middle] + name[middle:]


def _empty_is_default(flag) -> bool:
    """A list of names whose default is the empty list (``--debug``): empty is accepted."""
    return constraint_of(flag).many and flag.default in ("", [])


def distance(a: str, b: str) -> int:
    """Levenshtein distance (for telling a wrong suggestion from an equally close one)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _named_attacks(flag) -> list[tuple[str, str]]:
    names = _accepted_names(flag)
    first = next(n for n in names if n not in ("auto", "none", "all"))
    bad = misspell(first) if _kind(flag) is not int else "3"
    cases = [("misspelt", bad)]
    if not _empty_is_default(flag):
        cases.append(("empty", ""))
    if constraint_of(flag).many:
        cases.append(("one bad in a list", f"{first},{bad}"))
    return cases


NAMED_CASES = [(f.name, what, text, channel) for f in NAMED for what, text in _named_attacks(f)
               for channel in ("flag", "yaml")]
NAMED_ACCEPTED = [(f.name, n) for f in NAMED for n in _accepted_names(f)]
NAMED_ACCEPTED += [(f.name, "") for f in NAMED if _empty_is_default(f)]


@pytest.mark.parametrize("name, what, text, channel", NAMED_CASES)
def test_a_bad_name_is_one_line_naming_the_flag_and_the_choices(name, what, text, channel, workdir,
                                                                monkeypatch, capsys):
    flag = FLAGS[name]
    code, err, started = run_airo(monkeypatch, capsys, _argv(workdir, name, text, channel))
    line = assert_one_line_error(code, err, started, _label(flag, channel))
    if what == "empty":
        assert "empty value" in line or "invalid value ''" in line, line
        return
    if constraint_of(flag).registry:
        assert "Known: " in line
    else:
        assert constraint_of(flag).describe() in line
    if _kind(flag) is not int:  # a misspelt name gets the name it was meant to be
        assert "Did you mean '" in line, line


@pytest.mark.parametrize("name, choice", NAMED_ACCEPTED)
def test_every_accepted_name_is_accepted(name, choice):
    config = build_config(None, [f"--{name}", choice])
    value = config.get(name)
    assert choice in (value if isinstance(value, list) else [str(value)]) or choice == "" == "".join(value)


def test_misspelt_names_suggest_the_one_they_came_from():
    """Across every name-valued option, the suggestion for a doubled letter is the name."""
    wrong = []
    for flag in NAMED:
        names = [n for n in _accepted_names(flag) if isinstance(n, str) and len(n) > 3]
        for name in names:
            got = closest(misspell(name), names)
            # the name it came from, or one just as close (cncl -> cnccl is one letter from nccl too)
            if got != name and (got is None or distance(misspell(name), got) > distance(misspell(name), name)):
                wrong.append((flag.name, name, misspell(name), closest(misspell(name), names)))
    assert not wrong


# -- flags: "did you mean" -----------------------------------------------------------------------

def _bool_typos(flag) -> list[str]:
    """One typo away: a letter dropped from the longest word, two letters swapped."""
    words = flag.name.split("_")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    dropped = "_".join(words[:i] + [w[:len(w) // 2] + w[len(w) // 2 + 1:]] + words[i + 1:])
    j = len(w) // 2
    swapped = "_".join(words[:i] + [w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]] + words[i + 1:])
    return [t for t in dict.fromkeys([dropped, swapped]) if t != flag.name and t not in FLAGS]


BOOL_TYPOS = [(f.name, typo) for f in BOOLEAN if len(f.name) >= 5 for typo in _bool_typos(f)]


@pytest.mark.parametrize("name, typo", BOOL_TYPOS)
def test_a_misspelt_boolean_flag_gets_did_you_mean(name, typo, workdir, monkeypatch, capsys):
    """Bare (no value) and followed by another flag: not "needs a value" but the flag meant."""
    for argv in ([f"--{typo}"], [f"--{typo}", "--lora_r", "8"]):
        code, err, started = run_airo(monkeypatch, capsys, ["train", *argv])
        assert_one_line_error(code, err, started, f"unknown option '--{typo}'")
        assert "needs a value" not in err
        suggested = err.split("Did you mean --", 1)[1].split("?", 1)[0] if "Did you mean --" in err else None
        # the flag it came from, or one just as close (a typo can sit between two flags)
        assert suggested == name or (suggested is not None and distance(typo, suggested) <= distance(typo, name)), \
            (typo, err)


def test_misspelt_boolean_flags_mostly_find_their_flag():
    hits = sum(closest(typo, FLAGS) == name for name, typo in BOOL_TYPOS)
    assert hits >= 0.9 * len(BOOL_TYPOS), hits


@pytest.mark.parametrize("typo, meant", [
    ("lora-rank", "lora_r"), ("gradient_checkpointng", "gradient_checkpointing"), ("bf61", "bf16"),
    ("grad-accum-steps", "gradient_accumulation_steps"), ("Learning-Rate", "learning_rate"),
    ("learningrate", "learning_rate"), ("epochs", "num_train_epochs"), ("batch_size", "per_device_train_batch_size"),
    ("lora_rr", "lora_r"), ("save-step", "save_steps"),
])
def test_dashes_case_and_abbreviations_find_the_flag(typo, meant, capsys, monkeypatch):
    code, err, started = run_airo(monkeypatch, capsys, ["train", f"--{typo}"])
    assert_one_line_error(code, err, started, f"Did you mean --{meant}?")


def test_yaml_keys_are_suggested_as_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lora-rank: 8\n")
    with pytest.raises(ConfigError, match=r"line 1: unknown option 'lora-rank'\. Did you mean 'lora_r'\?"):
        build_config(str(path), [])


# -- where a value came from ------------------------------------------------------------------------

def test_a_bad_flag_is_never_blamed_on_a_yaml_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lora_r: 8\nlearning_rate: 0.0001\nmax_new_tokens: 10\nbits: 4\n")
    for argv, starts in [(["--learning_rate", "-1"], "--learning_rate must be above 0"),
                         (["--lora_r", "0"], "--lora_r must be at least 1"),
                         (["--bits", "3"], "--bits must be 4, 8, 16 or 32, got 3"),
                         (["--learning-rate", "abc"], "--learning-rate: invalid value 'abc'")]:
        with pytest.raises(ConfigError) as excinfo:
            build_config(str(path), argv)
        assert str(excinfo.value).startswith(starts) and "line" not in str(excinfo.value), excinfo.value
    # the other way round: a bad YAML value names its line, and a good flag overrides it
    path.write_text("lora_r: 8\nlearning_rate: -1\n")
    with pytest.raises(ConfigError, match=r"train.yaml, line 2: learning_rate must be above 0 and at most 1, "
                                          r"got -1"):
        build_config(str(path), [])
    assert build_config(str(path), ["--learning_rate", "1e-4"]).training["learning_rate"] == 1e-4
    # a check across options names the lines of the options it names, not every line of the section
    path.write_text("max_new_tokens: 10\ntop_k: 5\n")
    with pytest.raises(ConfigError) as excinfo:
        build_config(str(path), ["--min_new_tokens", "20"])
    assert str(excinfo.value).startswith(f"{path}, line 1: --min_new_tokens must be between 0 and --max_new_tokens")
    with pytest.raises(ConfigError) as excinfo:
        build_config(None, ["--max_new_tokens", "10", "--min_new_tokens", "20", "--top_k", "5"])
    assert str(excinfo.value).startswith("--min_new_tokens must be between")


def test_paths_options_name_must_exist(tmp_path, monkeypatch):
    """--deepspeed and the other JSON-file options: a missing file is named by preflight,
    before anything loads; inline JSON is no path."""
    from airo.core.config import check_option_paths

    monkeypatch.chdir(tmp_path)
    for name, flag in FLAGS.items():
        if flag.constraint is None or flag.constraint.path != "file":
            continue
        with pytest.raises(ConfigError, match=rf"^--{name} 'missing.json': no such file"):
            check_option_paths(build_config(None, [f"--{name}", "missing.json"]))
        (tmp_path / "there.json").write_text("{}")
        check_option_paths(build_config(None, [f"--{name}", "there.json"]))
        check_option_paths(build_config(None, [f"--{name}", "{}"]))


def test_a_report_target_that_is_not_installed_fails_before_the_model():
    """--report_to NAME without NAME's package: transformers would fail when the Trainer
    starts, after the model loaded; preflight names it first."""
    import importlib.util

    from airo.core.config import check_option_paths
    from airo.core.options import REPORT_PACKAGES

    missing = [t for t, pkgs in REPORT_PACKAGES.items() if all(importlib.util.find_spec(p) is None for p in pkgs)]
    assert set(REPORT_PACKAGES) <= set(constraint_of(FLAGS["report_to"]).choices)
    if not missing:
        pytest.skip("every reporting package is installed here")
    with pytest.raises(ConfigError, match=rf"^--report_to: {missing[0]} is not installed \(pip install "):
        check_option_paths(build_config(None, ["--report_to", missing[0]]))
    with pytest.raises(ConfigError, match=r"^--report_to: none cannot be combined with other names"):
        build_config(None, ["--report_to", "none,tensorboard"])
    check_option_paths(build_config(None, ["--report_to", "none"]))


# -- plugins' options are covered by the same mechanism --------------------------------------------

@dataclass
class KnobOptions:
    knob_count: int = field(default=3, metadata={"help": "How many.", "min": 1, "max": 10})
    knob_ratio: float = field(default=0.5, metadata={"help": "How much.", "min": 0, "below": 1})
    knob_mode: str = field(default="fast", metadata={"help": "How.", "choices": ["fast", "slow"]})


class KnobPlugin:
    @hookimpl
    def register_options(self, register):
        register("knobs", KnobOptions)


def test_a_plugins_declared_constraints_are_checked_like_airos(airo_plugin, workdir, monkeypatch, capsys):
    airo_plugin(KnobPlugin())
    flags = all_flags()
    cases = 0
    for name in ("knob_count", "knob_ratio"):
        flag = flags[name]
        for text in [*ATTACKS, *boundary_values(flag)]:
            if accepts(flag, text):
                assert build_config(None, [f"--{name}", text]).get(name) == pytest.approx(parse(flag, text))
            else:
                code, err, started = run_airo(monkeypatch, capsys, _argv(workdir, name, text, "flag"))
                assert_one_line_error(code, err, started, f"--{name}", flag.constraint.describe())
            cases += 1
    code, err, started = run_airo(monkeypatch, capsys, _argv(workdir, "knob_mode", "fsat", "yaml"))
    assert_one_line_error(code, err, started, "line 3: knob_mode must be fast or slow, got 'fsat'. "
                                              "Did you mean 'fast'?")
    assert cases > 20


# -- properties --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(NUMERIC),
       value=st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)))
def test_any_value_is_accepted_exactly_when_its_constraint_says(flag, value):
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        config = build_config(None, [f"--{flag.name}", text])
    except ConfigError as exc:
        assert not accepts(flag, text) or _across_options(flag.name, exc), (flag.name, text, exc)
        assert "\n" not in str(exc) and f"--{flag.name}" in str(exc)
        return
    assert accepts(flag, text), (flag.name, text)
    assert config.get(flag.name) == (None if _unsets(flag, text) else pytest.approx(parse(flag, text)))


@settings(max_examples=150, deadline=None)
@given(flag=st.sampled_from(NUMERIC), value=st.one_of(st.integers(), st.floats(), st.booleans(), st.none(),
                                                        st.lists(st.integers(), max_size=2)))
def test_python_values_go_through_the_same_checks(flag, value):
    """api.load_config(**values) and YAML values are checked like flags, whatever their type."""
    from airo.core import api

    try:
        config = api.load_config(None, [], **{flag.name: value})
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    got = config.get(flag.name)
    assert got is None or (isinstance(got, (int, float)) and accepts(flag, repr(got) if isinstance(got, float)
                                                                       else str(got)))


# -- transformers' own checks across options: before the model too ----------------------------------

def test_transformers_cross_checks_are_config_errors_before_the_model():
    config = build_config(None, ["--output_dir", "o", "--dataloader_prefetch_factor", "2"])
    with pytest.raises(ConfigError, match="the training options do not go together: .*dataloader_prefetch_factor"):
        config.training_arguments(use_cpu=True)


# -- the whole matrix in one fresh interpreter: torch is never imported -----------------------------

PROBE = """
import json, sys
from airo.core.cli import main
cases = json.load(open(sys.argv[1]))
codes = []
for argv in cases:
    try:
        main(argv)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_the_rejected_matrix_never_imports_torch(workdir, tmp_path):
    """Every generated rejection, run by the real CLI in one process that starts clean: each
    exits 2 and torch (which every model load needs) is never imported."""
    cases = [_argv(workdir, n, t, c) for n, t, c in NUMERIC_CASES] + \
            [_argv(workdir, n, t, c) for n, _, t, c in NAMED_CASES]
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps(cases))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(listing)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [2] * len(cases)
    assert not result["torch"] and not result["transformers"]
    assert proc.stderr.count("error: ") == len(cases) and "Traceback" not in proc.stderr


def test_generated_case_count():
    """The size of the generated matrix (reported in docs/reliability.md)."""
    total = len(NUMERIC_CASES) + len(NUMERIC_ACCEPTED) + len(NAMED_CASES) + len(NAMED_ACCEPTED) + len(BOOL_TYPOS)
    print(f"\ngenerated: {len(NUMERIC_CASES)} rejected numbers, {len(NUMERIC_ACCEPTED)} accepted numbers, "
          f"{len(NAMED_CASES)} rejected names, {len(NAMED_ACCEPTED)} accepted names, {len(BOOL_TYPOS)} "
          f"misspelt booleans: {total}")
    assert len(NUMERIC) >= 40 and len(NAMED) >= 15 and total > 1000
    assert {f.name for f in NUMERIC} >= {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                                         "num_train_epochs", "max_steps", "seed", "model_max_len", "lora_r",
                                         "warmup_steps", "weight_decay", "max_grad_norm", "logging_steps"}
    assert {f.name for f in NAMED} >= {"report_to", "optim", "lr_scheduler_type", "save_strategy", "eval_strategy",
                                       "logging_strategy", "dataset_format", "loader", "bits", "quant_type"}
