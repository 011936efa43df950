"""The typed config: defaults < YAML < flags, the seed's flag spellings, and validation."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from airo.core import ConfigError, api
from airo.core.config import TrainConfig, build_config
from airo.core.options import OBSOLETE, SEED_TRAINING_DEFAULTS

# The seed script's command lines, verbatim from its README (after `train.py`). The copy
# keeps the tests self-contained; where the shared seed README exists, a test checks it.
SEED_README = Path(os.environ.get("AIRO_SEED_README")
                   or Path(__file__).resolve().parents[2] / "shared" / "seed" / "qlora-airoboros-fork-README.md")
SEED_FULL_FINETUNE = r""" \
  --model_name_or_path $BASE_DIR/llama-2-7b-hf \
  --working_dir $BASE_DIR/$WANDB_PROJECT-checkpoints \
  --output_dir $BASE_DIR/$WANDB_PROJECT \
  --num_train_epochs 5 \
  --logging_steps 1 \
  --save_strategy steps \
  --save_steps 15 \
  --save_total_limit 1 \
  --data_seed 11422 \
  --evaluation_strategy steps \
  --eval_dataset_size 0.02 \
  --eval_steps 5 \
  --max_new_tokens 4096 \
  --dataloader_num_workers 3 \
  --logging_strategy steps \
  --optim adamw_torch \
  --do_train \
  --full_finetune \
  --bits 16 \
  --bf16 \
  --dataset $BASE_DIR/conversations.json \
  --dataset_format airoboros_chat \
  --model_max_len 4096 \
  --per_device_train_batch_size 12 \
  --learning_rate 2e-5 \
  --lr_scheduler_type cosine \
  --warmup_ratio 0.005 \
  --weight_decay 0.0 \
  --seed 11422 \
  --report_to wandb \
  --deepspeed deepspeed-7b.json \
  --gradient_checkpointing \
  --use_flash_attention_2
"""

SEED_QLORA = r""" \
  --model_name_or_path $BASE_DIR/llama-2-70b-hf \
  --working_dir $BASE_DIR/$WANDB_PROJECT-checkpoints \
  --output_dir $BASE_DIR/$WANDB_PROJECT-peft \
  --merged_output_dir $BASE_DIR/$WANDB_PROJECT \
  --num_train_epochs 5 \
  --logging_steps 1 \
  --save_strategy steps \
  --save_steps 75 \
  --save_total_limit 3 \
  --data_seed 11422 \
  --evaluation_strategy steps \
  --per_device_eval_batch_size 2 \
  --eval_dataset_size 0.01 \
  --eval_steps 75 \
  --max_new_tokens 4096 \
  --dataloader_num_workers 3 \
  --logging_strategy steps \
  --do_train \
  --lora_r 64 \
  --lora_alpha 16 \
  --lora_modules all \
  --bf16 \
  --bits 4 \
  --double_quant \
  --quant_type nf4 \
  --lr_scheduler_type constant \
  --dataset $BASE_DIR/conversations.json \
  --dataset_format airoboros_chat \
  --model_max_len 4096 \
  --per_device_train_batch_size 2 \
  --learning_rate 0.00008 \
  --adam_beta2 0.999 \
  --max_grad_norm 0.3 \
  --lora_dropout 0.0 \
  --weight_decay 0.0 \
  --seed 11422 \
  --report_to wandb \
  --gradient_checkpointing \
  --use_flash_attention_2 \
  --ddp_find_unused_parameters False
"""


def cfg(*argv: str, config_file=None, **values) -> TrainConfig:
    return build_config(config_file, list(argv), values=values)


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return str(path)


# -- layering -------------------------------------------------------------------------------

def test_defaults():
    c = cfg()
    assert (c.get("bits"), c.get("quant_type"), c.get("double_quant"), c.get("lora_modules")) == (4, "nf4", True, "all")
    assert (c.get("lora_r"), c.get("lora_alpha"), c.get("full_finetune")) == (64, 16, False)
    assert c.data.dataset_format == "airoboros" and c.data.train_on == "auto"
    assert c.data.on_bad_record == "error"
    # The seed's (upstream QLoRA's) TrainingArguments defaults.
    for name, value in SEED_TRAINING_DEFAULTS.items():
        assert c.training[name] == value
    assert c.training["optim"] == "auto"
    assert c.explicit == set() and c.warnings == []


def test_defaults_yaml_flags_precedence(tmp_path):
    path = write_yaml(tmp_path, """
model_name_or_path: /models/base
lora_r: 16
learning_rate: 1.0e-4
model:
  bits: 8
data:
  dataset_format: airoboros_chat
training:
  num_train_epochs: 2
""")
    c = cfg("--lora_r", "32", "--num_train_epochs", "4", config_file=path)
    assert c.model.model_name_or_path == "/models/base"    # YAML over default
    assert c.get("bits") == 8                                # YAML section over default
    assert c.data.dataset_format == "airoboros_chat"
    assert c.training["learning_rate"] == pytest.approx(1e-4)
    assert c.get("lora_r") == 32                             # flag over YAML
    assert c.training["num_train_epochs"] == 4
    assert c.get("lora_alpha") == 16                         # default untouched
    assert {"model_name_or_path", "lora_r", "bits", "learning_rate", "num_train_epochs"} <= c.explicit
    assert "lora_alpha" not in c.explicit
    assert c.config_file == path


def test_python_values_sit_between_yaml_and_flags(tmp_path):
    path = write_yaml(tmp_path, "lora_r: 16\nlora_alpha: 8\n")
    c = api.load_config(path, ["--lora_alpha", "4"], lora_r=24, lora_alpha=12, dataset="x.jsonl")
    assert (c.get("lora_r"), c.get("lora_alpha"), c.data.dataset) == (24, 4, "x.jsonl")


def test_dash_and_underscore_spellings():
    a = cfg("--model_name_or_path", "m", "--lora_r", "8", "--per_device_train_batch_size", "2")
    b = cfg("--model-name-or-path", "m", "--lora-r=8", "--per-device-train-batch-size=2")
    assert a.to_dict() == b.to_dict()
    assert b.get("lora_r") == 8 and b.training["per_device_train_batch_size"] == 2


def test_yaml_keys_accept_dashes(tmp_path):
    c = cfg(config_file=write_yaml(tmp_path, "lora-r: 8\nmodel-max-len: 512\n"))
    assert (c.get("lora_r"), c.data.model_max_len) == (8, 512)


def test_renamed_seed_flags():
    c = cfg("--evaluation_strategy", "steps", "--eval_steps", "5", "--warmup_ratio", "0.005")
    assert c.training["eval_strategy"] == "steps" and "evaluation_strategy" not in c.training
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio).
    assert c.training["warmup_steps"] == pytest.approx(0.005) and "warmup_ratio" not in c.training
    with pytest.raises(ConfigError, match="warmup ratio"):
        cfg("--warmup_ratio", "3")


def test_renamed_seed_keys_in_yaml(tmp_path):
    c = cfg(config_file=write_yaml(tmp_path, "evaluation_strategy: steps\n"))
    assert c.training["eval_strategy"] == "steps"


# -- booleans ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--full_finetune"], True),
    (["--full_finetune", "True"], True),
    (["--full_finetune", "true"], True),
    (["--full_finetune", "1"], True),
    (["--full_finetune=yes"], True),
    (["--full_finetune", "False"], False),
    (["--full_finetune", "false"], False),
    (["--full_finetune=0"], False),
])
def test_bool_flag_forms(argv, expected):
    assert cfg(*argv).get("full_finetune") is expected


def test_bool_flags_bare_between_other_flags():
    c = cfg("--bf16", "--double_quant", "--gradient_checkpointing", "--ddp_find_unused_parameters", "False",
            "--bits", "4")
    assert c.training["bf16"] is True and c.get("double_quant") is True
    assert c.training["gradient_checkpointing"] is True
    assert c.training["ddp_find_unused_parameters"] is False
    assert cfg("--double_quant", "False").get("double_quant") is False


def test_bool_flag_with_a_stray_value_is_an_error():
    with pytest.raises(ConfigError, match="unexpected argument 'maybe'"):
        cfg("--bf16", "maybe")
    with pytest.raises(ConfigError, match="invalid value 'maybe' for full_finetune"):
        cfg("--full_finetune=maybe")


def test_bool_values_in_yaml(tmp_path):
    c = cfg(config_file=write_yaml(tmp_path, "double_quant: false\nbf16: true\ntrain_on_source: 'yes'\n"))
    assert c.get("double_quant") is False and c.training["bf16"] is True and c.data.train_on_source is True


# -- unknown and obsolete ---------------------------------------------------------------------

def test_unknown_flag_suggests():
    with pytest.raises(ConfigError, match=r"unknown option '--learning_rat'\. Did you mean --learning_rate\?"):
        cfg("--learning_rat", "1e-4")
    with pytest.raises(ConfigError, match=r"Did you mean --lora_dropout\?"):
        cfg("--lora-dropuot", "0.1")
    with pytest.raises(ConfigError, match=r"unknown option '--no_such_flag_at_all'"):
        cfg("--no_such_flag_at_all", "1")


def test_unknown_yaml_key_suggests(tmp_path):
    path = write_yaml(tmp_path, "lora_rr: 8\n")
    with pytest.raises(ConfigError) as excinfo:
        cfg(config_file=path)
    assert "lora_rr" in str(excinfo.value) and "Did you mean 'lora_r'?" in str(excinfo.value)
    assert path in str(excinfo.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfg(config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        cfg(config_file=write_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg(config_file=write_yaml(tmp_path, "a: [1, 2\n"))


def test_obsolete_seed_flags_are_accepted_with_a_warning():
    c = cfg("--source_max_len", "16", "--do_train", "--use_cache", "--num_beam_groups", "2", "--bits", "4",
            "--max_new_tokens", "4096")
    assert len(c.warnings) == 4
    for flag in ("--source_max_len", "--do_train", "--use_cache", "--num_beam_groups"):
        assert any(w.startswith(flag + " ") and "ignored" in w for w in c.warnings), c.warnings
    for name in ("source_max_len", "do_train", "use_cache", "num_beam_groups"):
        assert name not in c.training and name not in c.explicit
    assert c.get("bits") == 4 and c.get("max_new_tokens") == 4096  # the predict plugin's option now


def test_obsolete_keys_in_yaml(tmp_path):
    c = cfg(config_file=write_yaml(tmp_path, "use_cache: true\nsource_max_len: 16\n"))
    assert len(c.warnings) == 2 and "source_max_len" in c.warnings[1]


def test_every_obsolete_flag_has_a_reason():
    assert all(isinstance(reason, str) and reason for reason in OBSOLETE.values())


# -- TrainingArguments fields -----------------------------------------------------------------

def test_training_arguments_fields_are_flags():
    c = cfg("--learning_rate", "2e-5", "--lr_scheduler_type", "cosine", "--deepspeed", "deepspeed-7b.json",
            "--report_to", "wandb", "--per_device_eval_batch_size", "2", "--adam_beta2", "0.999",
            "--data_seed", "11422", "--save_total_limit", "3", "--dataloader_num_workers", "3")
    t = c.training
    assert t["learning_rate"] == pytest.approx(2e-5)
    assert t["lr_scheduler_type"] == "cosine"
    assert t["deepspeed"] == "deepspeed-7b.json"   # a path stays a path
    assert t["report_to"] == ["wandb"]
    assert (t["per_device_eval_batch_size"], t["data_seed"], t["save_total_limit"]) == (2, 11422, 3)
    assert t["adam_beta2"] == pytest.approx(0.999)
    assert c.seed == 42 and cfg("--seed", "7").seed == 7


def test_deepspeed_inline_json():
    c = cfg("--deepspeed", '{"zero_optimization": {"stage": 2}}')
    assert c.training["deepspeed"] == {"zero_optimization": {"stage": 2}}


def test_output_dir_is_airo_own_flag():
    c = cfg("--output_dir", "out")
    assert c.run.output_dir == "out" and "output_dir" not in c.training


# -- the seed's own command lines ----------------------------------------------------------------

def _seed_command(kind: str, tmp: str) -> list[str]:
    args = {"full": SEED_FULL_FINETUNE, "qlora": SEED_QLORA}[kind].replace("\\\n", " ")
    return shlex.split(args.replace("$BASE_DIR", tmp).replace("$WANDB_PROJECT", "proj"))


def test_seed_command_lines_are_verbatim():
    if not SEED_README.exists():
        pytest.skip("the shared seed README is not on this machine")
    text = SEED_README.read_text()
    assert "train.py" + SEED_FULL_FINETUNE in text and "train.py" + SEED_QLORA in text


@pytest.fixture
def seed_tmp(tmp_path) -> str:
    return str(tmp_path / "workspace")


def test_seed_qlora_command_line(seed_tmp):
    c = cfg(*_seed_command("qlora", seed_tmp))
    m, d, r, t = c.model, c.data, c.run, c.training
    q = c.section("qlora")  # the qlora loader plugin's options
    assert (q.bits, q.double_quant, q.quant_type, q.lora_modules) == (4, True, "nf4", "all")
    assert (q.lora_r, q.lora_alpha, q.lora_dropout, c.get("full_finetune")) == (64, 16, 0.0, False)
    assert m.model_name_or_path == f"{seed_tmp}/llama-2-70b-hf"
    assert m.attn_implementation == "flash_attention_2"   # --use_flash_attention_2
    assert (d.dataset, d.dataset_format) == (f"{seed_tmp}/conversations.json", "airoboros_chat")
    assert (d.model_max_len, d.eval_dataset_size) == (4096, pytest.approx(0.01))
    assert r.output_dir == f"{seed_tmp}/proj-peft" and c.get("merged_output_dir") == f"{seed_tmp}/proj"
    assert c.working_dir == f"{seed_tmp}/proj-checkpoints"
    assert t["learning_rate"] == pytest.approx(8e-5) and t["adam_beta2"] == pytest.approx(0.999)
    assert (t["eval_strategy"], t["lr_scheduler_type"], t["report_to"]) == ("steps", "constant", ["wandb"])
    assert t["bf16"] is True and t["gradient_checkpointing"] is True and t["ddp_find_unused_parameters"] is False
    assert (t["num_train_epochs"], t["per_device_train_batch_size"], t["seed"], t["data_seed"]) == (5, 2, 11422, 11422)
    assert t["max_grad_norm"] == pytest.approx(0.3)
    assert sorted(w.split()[0] for w in c.warnings) == ["--do_train"]
    assert c.get("max_new_tokens") == 4096


def test_seed_full_finetune_command_line(seed_tmp):
    c = cfg(*_seed_command("full", seed_tmp))
    m, d, r, t = c.model, c.data, c.run, c.training
    assert c.get("full_finetune") is True and c.get("bits") == 16
    assert r.output_dir == f"{seed_tmp}/proj" and c.working_dir == f"{seed_tmp}/proj-checkpoints"
    assert (d.dataset_format, d.model_max_len, d.eval_dataset_size) == ("airoboros_chat", 4096, pytest.approx(0.02))
    assert t["deepspeed"] == "deepspeed-7b.json"
    assert (t["optim"], t["lr_scheduler_type"], t["per_device_train_batch_size"]) == ("adamw_torch", "cosine", 12)
    assert t["learning_rate"] == pytest.approx(2e-5) and t["warmup_steps"] == pytest.approx(0.005)
    assert (t["save_steps"], t["save_total_limit"], t["eval_steps"], t["logging_steps"]) == (15, 1, 5, 1)
    assert t["bf16"] is True and t["gradient_checkpointing"] is True
    assert m.attn_implementation == "flash_attention_2"
    assert sorted(w.split()[0] for w in c.warnings) == ["--do_train"]
    assert c.get("max_new_tokens") == 4096


def test_full_finetune_defaults_to_16_bits_but_rejects_explicit_4():
    assert cfg("--full_finetune").get("bits") == 16
    assert cfg("--full_finetune", "--bits", "32").get("bits") == 32
    with pytest.raises(ConfigError, match="--full_finetune needs --bits 16 or 32"):
        cfg("--full_finetune", "--bits", "4")


def test_seed_convenience_flags():
    c = cfg("--llama1_tokenizer_patch")
    assert "llama1" in c.model.tokenizer_patches.split(",")
    assert cfg("--use_flash_attention_2").model.attn_implementation == "flash_attention_2"
    assert cfg("--use_flash_attention_2", "--attn_implementation", "sdpa").model.attn_implementation == "sdpa"


# -- YAML errors name the file, the line and the option --------------------------------------

def yaml_error(tmp_path, text: str) -> tuple[str, str]:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        cfg(config_file=path)
    assert excinfo.value.exit_code == 2 and "\n" not in str(excinfo.value)
    return path, str(excinfo.value)


def test_yaml_value_of_the_wrong_shape(tmp_path):
    path, message = yaml_error(tmp_path, "output_dir: o\n\n\n\n\n\nbits: [4]\n")
    assert message == f"{path}, line 7: bits: expected an integer, got a list [4]"


@pytest.mark.parametrize("text, expected", [
    ("learning_rate: .nan\n", "line 1: learning_rate: invalid value nan for learning_rate: expected a finite number"),
    ("bits: 4\nlora_dropout: -.inf\n", "line 2: lora_dropout: invalid value -inf for lora_dropout: expected a finite"),
    ("model:\n  bits: 4\n  lora_r: [8]\n", "line 3: lora_r: expected an integer, got a list [8]"),
    ("learning_rate: true\n", "line 1: learning_rate: expected a number, got a boolean true"),
    ("bits:\n", "line 1: bits: expected an integer, got nothing (null)"),
    ("dataset: {a: 1}\n", 'line 1: dataset: expected text, got a mapping {"a": 1}'),
    ("report_to: {a: 1}\n", 'line 1: report_to: expected a list, got a mapping {"a": 1}'),
    ("lora_modules: [[q_proj]]\n", "line 1: lora_modules: expected text, got a list"),
    ("deepspeed: [1]\n", "line 1: deepspeed: expected a mapping, got a list [1]"),
    ("model: 4\n", "line 1: model: expected a section of option: value lines indented under it, got an integer 4"),
    ("bits: 4\ntraining: [1, 2]\n", "line 2: training: expected a section"),
    ("lora_r: 8\nlerning_rate: 1e-4\n", "line 2: unknown option 'lerning_rate'. Did you mean 'learning_rate'?"),
    ("data:\n  datset: x.jsonl\n", "line 2: unknown option 'datset'. Did you mean 'dataset'?"),
    ("a: [1, 2\n", "line 2: not valid YAML: while parsing a flow sequence, expected ',' or ']'"),
])
def test_yaml_errors_name_the_line(tmp_path, text, expected):
    path, message = yaml_error(tmp_path, text)
    assert message.startswith(f"{path}, {expected}"), message


@pytest.mark.parametrize("text, expected", [
    ("lora_r: 8\nbits: 4\nlora_r: 16\n", "line 3: lora_r is set twice (first on line 1)"),
    ("model:\n  bits: 4\n  bits: 8\n", "line 3: bits is set twice (first on line 2)"),
    ("bits: 4\nmodel:\n  bits: 8\n", "line 3: bits is set twice (first on line 1 as bits)"),
    ("lora-r: 4\nlora_r: 8\n", "line 2: lora_r is set twice (first on line 1 as lora-r)"),
    ("warmup_steps: 0.1\nwarmup_ratio: 0.2\n", "line 2: warmup_ratio is set twice (first on line 1 as warmup_steps)"),
    ("deepspeed:\n  stage: 2\n  stage: 3\n", "line 3: stage is set twice (first on line 2)"),
])
def test_yaml_duplicate_keys_name_both_lines(tmp_path, text, expected):
    path, message = yaml_error(tmp_path, text)
    assert message.startswith(f"{path}, {expected}"), message


def test_yaml_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_bytes(b"bits: 4\ndataset: caf\xe9.jsonl\n")
    with pytest.raises(ConfigError, match=r"train\.yaml, line 2: not valid UTF-8"):
        cfg(config_file=str(path))


def test_yaml_still_accepts_empty_sections_anchors_and_bom(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_bytes("\ufeffmodel:\ndata:\n  dataset: x.jsonl\nlora_r: &l 8\nlora_alpha: *l\n".encode())
    c = cfg(config_file=str(path))
    assert c.data.dataset == "x.jsonl" and c.get("lora_r") == 8 and c.get("lora_alpha") == 8


@pytest.mark.parametrize("argv", [["--learning_rate", "nan"], ["--learning_rate", "inf"],
                                  ["--lora_dropout", "-inf"], ["--lora_alpha", "1e999"],
                                  ["--eval_dataset_size", "NaN"]])
def test_nan_and_inf_flags_are_config_errors(argv):
    with pytest.raises(ConfigError, match=rf"{argv[0]}: invalid value .* expected a finite number"):
        cfg(*argv)
    with pytest.raises(ConfigError, match="expected a finite number"):
        api.load_config(None, [], **{argv[0][2:]: float(argv[1])})


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--bits", "3"], "--bits must be 4, 8, 16 or 32, got 3"),
    (["--quant_type", "xx"], "--quant_type must be nf4 or fp4, got 'xx'"),
    (["--on_bad_record", "ignore"], "--on_bad_record must be error or skip, got 'ignore'"),
    (["--train_on", "last_replies"], "--train_on must be auto, last_reply or all_replies, got 'last_replies'. "
                                     "Did you mean 'last_reply'?"),
    (["--merge_method", "fast"], "--merge_method must be auto, dequantize or direct"),
    (["--eval_dataset_size", "-1"], "--eval_dataset_size must be a fraction below 1, a count, or 0"),
    (["--model_max_len", "8"], "--model_max_len must be at least 16"),
    (["--lora_r", "abc"], "--lora_r: invalid value 'abc' for lora_r"),
    (["--learning_rate", "fast"], "invalid value 'fast' for learning_rate"),
    (["--learning_rate"], "flag --learning_rate needs a value"),
    (["train.yaml"], "unexpected argument 'train.yaml'"),
])
def test_validation_errors(argv, message):
    with pytest.raises(ConfigError) as excinfo:
        cfg(*argv)
    assert message in str(excinfo.value)
    assert excinfo.value.exit_code == 2


def test_none_values():
    c = cfg("--max_train_samples", "100", "--max_eval_samples", "none")
    assert c.data.max_train_samples == 100 and c.data.max_eval_samples is None


# -- the TrainConfig object -------------------------------------------------------------------

def test_working_dir():
    assert cfg("--output_dir", "runs/out/").working_dir == "runs/out-checkpoints"
    assert cfg("--output_dir", "o", "--working_dir", "w").working_dir == "w"
    with pytest.raises(ConfigError, match="--output_dir is required"):
        _ = cfg().working_dir


def test_get_and_to_dict():
    c = cfg("--lora_r", "8", "--learning_rate", "1e-3")
    assert c.get("lora_r") == 8 and c.get("learning_rate") == pytest.approx(1e-3)
    assert c.get("dataset_format") == "airoboros"
    with pytest.raises(KeyError):
        c.get("nope")
    d = c.to_dict()
    assert d["lora_r"] == 8 and d["learning_rate"] == pytest.approx(1e-3) and "output_dir" in d


def test_training_arguments_on_cpu(tmp_path):
    """TrainingArguments built from the config: output_dir is the working dir.

    On a CPU-only machine transformers refuses --bf16 unless use_cpu=True (it checks for
    a bf16-capable GPU); fp16 passes construction. The trainer decides about use_cpu.
    """
    import torch

    out = str(tmp_path / "out")
    c = cfg("--output_dir", out, "--learning_rate", "1e-4", "--lr_scheduler_type", "cosine",
            "--report_to", "none", "--num_train_epochs", "2")
    args = c.training_arguments()
    assert args.output_dir == c.working_dir == out + "-checkpoints"
    assert args.learning_rate == pytest.approx(1e-4) and args.num_train_epochs == 2
    assert str(args.lr_scheduler_type.value) == "cosine"
    assert args.report_to in ([], "none", ["none"])
    assert args.max_grad_norm == pytest.approx(0.3) and args.get_warmup_steps(1000) == 30  # the seed's 3%
    # optim auto: paged AdamW for 4/8-bit runs on CUDA (the seed's), else plain AdamW.
    expected = "paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch"
    assert str(args.optim.value) == expected
    assert str(cfg("--output_dir", out, "--full_finetune").training_arguments().optim.value) == "adamw_torch"
    # Overrides win, output_dir excepted.
    args = c.training_arguments(optim="adafactor", output_dir="elsewhere", num_train_epochs=1)
    assert str(args.optim.value) == "adafactor" and args.output_dir == out + "-checkpoints"
    assert args.num_train_epochs == 1

    bf16 = cfg("--output_dir", out, "--bf16")
    if not torch.cuda.is_available():
        assert bf16.training_arguments(use_cpu=True).bf16 is True
    else:
        assert bf16.training_arguments().bf16 is True


def test_training_arguments_with_deepspeed_file(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", '
                  '"zero_optimization": {"stage": 2}}')
    c = cfg("--output_dir", str(tmp_path / "o"), "--deepspeed", str(ds))
    assert c.training_arguments().deepspeed == str(ds)


def test_none_unsets_optional_numbers_but_not_text_options():
    from airo.core import api

    config = api.load_config(None, ["--output_dir", "o", "--neftune_noise_alpha", "None", "--report_to", "none"])
    assert config.training["neftune_noise_alpha"] is None
    assert config.training["report_to"] == ["none"]
    assert api.load_config(None, ["--output_dir", "o"]).training["neftune_noise_alpha"] == 5.0  # the seed's
