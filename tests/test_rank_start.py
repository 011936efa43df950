"""Every rank checks the run's folders before any rank creates them: rank 0 creates and
stamps the working dir only once the process group exists, and the group forms only when
every rank has finished its checks. A 2-process start, repeated, with rank 1 started late
(where rank 0 used to create the working dir while rank 1 was still to check it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import EXAMPLES

pytestmark = pytest.mark.slow

REPEATS = 1

# torchrun's entry point: airo's CLI, with each rank recording what it saw when it checked
# the folders (rank 1 starts late, as a slow node or a busy machine would).
PROBE = '''
import json, os, sys, time
from pathlib import Path

from airo.core.training import recipe

rank = int(os.environ["RANK"])
checked = recipe.check_folders


def observed(config, outputs=()):
    Path(os.environ["AIRO_TEST_PROBE"] + f".rank{rank}").write_text(json.dumps(
        {"working_dir_existed": Path(config.working_dir).exists()}))
    return checked(config, outputs)


recipe.check_folders = observed
if rank == 1:
    time.sleep(float(os.environ["AIRO_TEST_RANK1_DELAY"]))
from airo.core.cli import main

main(sys.argv[1:])
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_rank_checks_a_working_dir_rank_0_is_creating(tiny_model_dir, tmp_path, airo_env):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = dict(os.environ, OMP_NUM_THREADS="1", AIRO_TEST_RANK1_DELAY="4")
    for attempt in range(REPEATS):
        root = tmp_path / f"run{attempt}"
        env["AIRO_TEST_PROBE"] = str(root / "seen")
        root.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(probe), "train",
               "--model_name_or_path", tiny_model_dir, "--output_dir", root / "out", "--working_dir", root / "work",
               "--dataset", EXAMPLES / "data" / "conversations.json", "--dataset_format", "airoboros_chat",
               "--max_steps", "1", "--per_device_train_batch_size", "2",
               "--gradient_accumulation_steps", "1", "--bits", "32", "--lora_r", "4", "--eval_dataset_size", "0",
               "--save_strategy", "no", "--post_train_actions", "none", "--report_to", "none"]
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"start {attempt + 1}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
        for rank in (0, 1):
            seen = json.loads((root / f"seen.rank{rank}").read_text())
            assert not seen["working_dir_existed"], f"start {attempt + 1}: rank {rank} checked a working dir " \
                                                    "rank 0 had already created"
        assert json.loads((root / "work" / "completed").read_text())["global_step"] == 1
