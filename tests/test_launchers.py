"""A launcher that starts fewer processes than it was asked for stops the run before anything
loads (accelerate's simple launcher on a machine without GPUs ran one process for
`--num_processes 2` while the README said DDP)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from airo.core.errors import ConfigError
from airo.core.launchers import check_launcher

ACCELERATE = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False"}


@pytest.mark.parametrize("argv", [
    ["python", "accelerate", "launch", "--num_processes", "2", "-m", "airo.core", "train"],
    ["python", "accelerate", "launch", "--num-processes=4", "-m", "airo.core", "train"],
    ["python", "-m", "accelerate.commands.launch", "--num_machines", "2", "-m", "airo.core", "train"],
])
def test_one_process_for_several_asked_is_an_error(argv):
    with pytest.raises(ConfigError, match=r"accelerate launch was asked for \d processes but started 1: .*--multi_gpu"):
        check_launcher({**ACCELERATE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, argv)


def test_a_config_that_asks_for_several_is_caught_by_its_master_port():
    with pytest.raises(ConfigError, match="its config asks for several"):
        check_launcher({**ACCELERATE, "MASTER_PORT": "29500"}, ["python", "accelerate", "launch", "train.py"])


@pytest.mark.parametrize("env, argv", [
    ({}, ["torchrun", "--nproc_per_node", "2"]),                                     # not accelerate
    ({**ACCELERATE, "WORLD_SIZE": "2", "MASTER_PORT": "1"}, ["accelerate", "launch", "--num_processes", "2"]),
    (ACCELERATE, ["accelerate", "launch", "-m", "airo.core", "train"]),               # one process, as asked
    ({**ACCELERATE, "MASTER_PORT": "1"}, ["accelerate", "launch", "--num_processes", "1", "x.py"]),
])
def test_launches_that_run_what_they_say_pass(env, argv):
    check_launcher(env, argv)


@pytest.mark.slow
def test_accelerate_launch_without_multi_gpu_stops_on_cpu(tmp_path):
    """The real launcher: `accelerate launch --num_processes 2` on a CPU-only machine."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("with GPUs accelerate picks its multi-GPU launcher itself")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                           "-m", "airo.core", "train", "--model_name_or_path", str(tmp_path / "none"),
                           "--dataset", "x.jsonl", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "accelerate launch was asked for 2 processes but started 1" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-checkpoints").exists()


# -- Slurm -----------------------------------------------------------------------------------------

from airo.core.launchers import expand_nodelist, slurm_environment  # noqa: E402


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("gpu[1,3-4],cpu7", ["gpu1", "gpu3", "gpu4", "cpu7"]),
    ("a[08-10]-ib", ["a08-ib", "a09-ib", "a10-ib"]),
])
def test_slurm_host_lists_expand(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


SRUN_TASK = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
             "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4"}


def test_an_srun_task_gets_its_rank_world_and_first_host():
    assert slurm_environment(SRUN_TASK) == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
                                            "MASTER_ADDR": "node07", "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert slurm_environment({**SRUN_TASK, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})["MASTER_ADDR"] == "head"


@pytest.mark.parametrize("env", [
    {**SRUN_TASK, "RANK": "0", "WORLD_SIZE": "2"},                       # torchrun inside the job: its values win
    {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NUM_TASKS"},  # the batch script: one process
    {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1"},
    {},
])
def test_other_slurm_processes_are_left_alone(env):
    assert slurm_environment(env) == {}


@pytest.mark.slow
def test_two_srun_style_tasks_train_as_one_run(tiny_model_dir, tmp_path, airo_env):
    """Two processes started as srun starts them (SLURM_* variables only, no torchrun) train
    one DDP run: the summary counts 2 processes and one adapter is written."""
    import os

    from test_distributed import CONVERSATIONS, _free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost",
               SLURM_JOB_ID="77", MASTER_PORT=str(_free_port()))
    argv = [sys.executable, "-m", "airo.core", "train", "--model_name_or_path", tiny_model_dir,
            "--output_dir", str(tmp_path / "peft"), "--dataset", str(CONVERSATIONS),
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--bits", "16",
            "--lora_r", "4", "--eval_dataset_size", "0", "--report_to", "none", "--save_strategy", "no"]
    tasks = [subprocess.Popen(argv, env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [task.communicate(timeout=600) for task in tasks]
    for task, (out, err) in zip(tasks, outputs):
        assert task.returncode == 0, out[-3000:] + err[-3000:]
    assert "x 2 process(es)" in outputs[0][0]
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_distributed_doc_names_what_exists():
    """docs/distributed.md's files and tests exist, and the Slurm script is valid bash that runs
    torchrun with c10d rendezvous inside one task per node."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    for path in set(re.findall(r"`((?:examples|tests)/[\w./-]+)`", text)) | set(re.findall(r"(examples/[\w/.-]+\.(?:json|yaml|sbatch))", text)):
        assert (REPO / path).exists(), path
    script = REPO / "examples" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    body = script.read_text()
    assert "#SBATCH --ntasks-per-node=1" in body and "--rdzv_backend c10d" in body and "-m airo.core train" in body
    for name in ("test_two_nodes_of_two_processes_through_c10d_rendezvous", "test_two_srun_style_tasks_train_as_one_run",
                 "test_accelerate_launch_without_multi_gpu_stops_on_cpu"):
        assert any(re.search(rf"^def {name}\(", p.read_text(), re.M) for p in (REPO / "tests").glob("test_*.py")), name


# -- airo doctor's distributed section ---------------------------------------------------------------

from airo.core.launchers import describe_distributed, distributed_state  # noqa: E402


def test_doctor_sees_a_torchrun_rank_and_the_backends():
    state = distributed_state({"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                               "MASTER_ADDR": "head", "MASTER_PORT": "29500", "HOME": "/nonexistent"}, gpus=2)
    assert state["launcher"] == "torchrun" and state["master"] == "head:29500"
    assert "gloo" in state["backends"] and state["fsdp2"] is True
    assert describe_distributed(state)[0] == "launched by torchrun: rank 1 of 4 (local rank 1), rendezvous head:29500"
    assert state["problems"] == []


def test_doctor_flags_the_usual_mistakes(tmp_path):
    config = tmp_path / "hf" / "accelerate" / "default_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nnum_machines: 1\n")
    state = distributed_state({"HF_HOME": str(tmp_path / "hf"), "MASTER_PORT": "29500",
                               "SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2"}, gpus=0)
    problems = " | ".join(state["problems"])
    assert "MASTER_PORT is set but WORLD_SIZE is not" in problems
    assert "says MULTI_CPU" in problems
    assert "Slurm job 9 has 2 nodes but this process was not started by srun or torchrun" in problems
    no_config = distributed_state({"HF_HOME": str(tmp_path / "none")}, gpus=0)
    assert no_config["problems"] == [] and "--multi_gpu" in no_config["notes"][0]


def test_a_first_deepspeed_run_on_cpu_says_it_compiles(tmp_path, monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp_extension

    from airo.core.training.distributed import DeepSpeed

    build = tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    build.mkdir(parents=True)
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose=False: str(build))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    backend = DeepSpeed({"deepspeed": "ds.json"})
    backend.announce_builds(main=False)
    assert capsys.readouterr().out == ""  # rank 0 only
    backend.announce_builds(main=True)
    assert "DeepSpeed compiles its CPU communication op (deepspeed_shm_comm)" in capsys.readouterr().out
    (build / "deepspeed_shm_comm.so").write_bytes(b"")
    backend.announce_builds(main=True)
    assert capsys.readouterr().out == ""  # built once: nothing to say
