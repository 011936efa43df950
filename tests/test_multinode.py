"""Several "nodes" on one host: two torchrun agents meeting through c10d rendezvous, two
processes each, train one run (4 processes), as docs/distributed.md tells a cluster to."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_distributed import CONVERSATIONS, _free_port

pytestmark = pytest.mark.slow


def test_two_nodes_of_two_processes_through_c10d_rendezvous(tiny_model_dir, tmp_path, airo_env):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    train = ["-m", "airo.core", "train", "--model_name_or_path", tiny_model_dir,
             "--output_dir", str(tmp_path / "peft"), "--dataset", str(CONVERSATIONS),
             "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--num_train_epochs", "1",
             "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--bits", "16",
             "--lora_r", "4", "--eval_dataset_size", "0", "--logging_steps", "1", "--save_steps", "3",
             "--report_to", "none"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--rdzv_id", "airo-test", *train],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _node in range(2)]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:] + err[-3000:]
    out = "".join(o for o, _ in outputs)
    assert "4 effective = 1 per device x 1 accumulation x 4 process(es)" in out
    assert out.count("saved the adapter") == 1, "only global rank 0 writes final artifacts"
    report = json.loads((tmp_path / "peft" / "data_report.json").read_text())
    completed = json.loads((tmp_path / "peft-checkpoints" / "completed").read_text())
    assert completed["global_step"] == -(-report["examples"]["train"] // 4)
    assert completed["data"]["processes"] == 4
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
