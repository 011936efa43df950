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
