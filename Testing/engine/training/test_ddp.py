"""``torchrun --nproc_per_node 2 -m cadcore train``: two CPU processes (gloo) train a few steps; both ranks end with
identical weights, only rank 0 writes, and the package loads."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from cadcore.registry.packages import find_model

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    output = tmp_path / "ddp-model"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "cadcore", "train",
               "--data", str(SAMPLES), "-o", str(output), "--epochs", "2", "--filters", "4,8,16",
               "--patch-size", "16,16,16", "--batch-size", "1", "--spacing", "2,2,2", "--device", "cpu",
               "--val-every", "1", "--val-fraction", "0.34"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_weight_sha256"]) == 2
    assert summary["rank_weight_sha256"][0] == summary["rank_weight_sha256"][1]
    assert [row["epoch"] for row in summary["history"]] == [1, 2] and "dice_mean" in summary["history"][-1]
    find_model(output).verify()
    assert sorted(p.name for p in output.iterdir()) == ["model.json", "model.safetensors", "training",
                                                       "training_curves.png", "training_log.csv",
                                                       "training_summary.json"]
