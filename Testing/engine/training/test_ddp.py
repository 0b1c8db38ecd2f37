"""``torchrun --nproc_per_node 2 -m cadcore train``: two CPU processes (gloo) train a few steps; both ranks end with
identical weights, only rank 0 writes, and the package loads. With ``--interactive`` too: the simulated-click rounds
(a different number per rank) hang no rank, and both ranks choose the same best epoch and keep the same best weights.

The processes import the engine from this checkout (``PYTHONPATH``), not whatever ``cadcore`` is installed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cadcore.registry.packages import find_model

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_two_ranks(tmp_path: Path, output: Path, *extra: str) -> dict:
    """Two gloo ranks of a tiny training; returns its training_summary.json (a hung rank fails on the timeout)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "cadcore", "train",
               "--data", str(SAMPLES), "-o", str(output), "--epochs", "2", "--filters", "4,8,16",
               "--patch-size", "16,16,16", "--batch-size", "1", "--spacing", "2,2,2", "--device", "cpu",
               "--val-every", "1", "--val-fraction", "0.34", *extra]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "CADExtension")}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads((output / "training_summary.json").read_text())


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    output = tmp_path / "ddp-model"
    summary = train_two_ranks(tmp_path, output)
    assert summary["world_size"] == 2 and len(summary["rank_weight_sha256"]) == 2
    assert summary["rank_weight_sha256"][0] == summary["rank_weight_sha256"][1]
    assert [row["epoch"] for row in summary["history"]] == [1, 2] and "dice_mean" in summary["history"][-1]
    find_model(output).verify()
    assert sorted(p.name for p in output.iterdir()) == ["model.json", "model.safetensors", "training",
                                                       "training_curves.png", "training_log.csv",
                                                       "training_summary.json"]


def test_two_process_interactive_training_agrees_across_ranks(tmp_path):
    """``--interactive`` under DDP: each rank runs its own correction rounds (up to 3 here, drawn per rank) through
    the unwrapped network, validation is sharded (the one validation case is rank 0's) and reduced, and both ranks
    pick the same best epoch with the same best weights; the package is a guided one."""
    output = tmp_path / "ddp-guided"
    summary = train_two_ranks(tmp_path, output, "--interactive", "--prompt-corrections", "3")
    assert summary["world_size"] == 2
    assert summary["rank_weight_sha256"][0] == summary["rank_weight_sha256"][1]
    assert len(summary["rank_best"]) == 2 and summary["rank_best"][0] == summary["rank_best"][1]
    assert summary["rank_best"][0]["best_epoch"] in (1, 2) and summary["rank_best"][0]["sha256"]
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert all(0.0 <= row["dice_mean"] <= 1.0 for row in summary["history"])
    package = find_model(output)
    package.verify()
    card = json.loads((output / "model.json").read_text())
    assert card["interactive"]["channels"] == ["image", "positive", "negative", "previous"]
    assert card["network"]["params"]["in_channels"] == 4 and card["training"]["best_epoch"] in (1, 2)
    assert not (output / "init_report.json").exists() and (output / "training" / "best.pt").is_file()


RANKS_SCRIPT = """
import datetime, json, os, sys
import numpy as np, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from types import SimpleNamespace
from cadcore.training.distributed import start
from cadcore.training.interactive import prompted_batch, validate_prompted

torch.manual_seed(0)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
ranks, device = start(torch.device("cpu"))
calls = [0]

class HalfBlock(torch.nn.Module):  # answers "the structure" in the lower half; a BatchNorm gives DDP buffers to sync
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm3d(4)
    def forward(self, x):
        calls[0] += 1
        out = torch.zeros((x.shape[0], 2, *x.shape[2:])) + 0.0 * self.norm(x).sum()
        out[:, 0] = 1.0
        out[:, 1, :6] = 2.0
        return out

model = DistributedDataParallel(HalfBlock())
through_ddp = [0]  # forward passes that went through the wrapper (each may broadcast the BatchNorm buffers)
model.register_forward_pre_hook(lambda module, args: through_ddp.__setitem__(0, through_ddp[0] + 1))
labels = torch.zeros((1, 1, 12, 12, 12), dtype=torch.long)
labels[0, 0, 2:9, 2:9, 2:9] = 1
rng = np.random.default_rng(5)
for _ in range(3):  # rank 0 runs no correction round, rank 1 several: a DDP collective inside them would hang
    prompted_batch(torch.rand((1, 1, 12, 12, 12)), labels, model, [1.0] * 3, rng, 5 * ranks.rank, device)
rounds = calls[0]
cases = []
for shift in range(3):
    label = np.zeros((1, 12, 12, 12), np.int64)
    label[0, 2 + shift:9, 2:9, 2:9] = 1
    cases.append(SimpleNamespace(image=np.random.rand(1, 12, 12, 12).astype(np.float32), label=label))
calls[0] = 0
score = validate_prompted(model, cases, [1], [12, 12, 12], [1.0] * 3, device, ranks=ranks)
validation_calls = calls[0]
single = validate_prompted(HalfBlock(), cases, [1], [12, 12, 12], [1.0] * 3, device) if ranks.main else None
dist.barrier()
# one file per rank: two ranks printing to the same stdout may interleave their lines
open(f"rank{ranks.rank}.json", "w").write(json.dumps({"rank": ranks.rank, "rounds": rounds,
    "validation_calls": validation_calls, "score": score, "single": single, "through_ddp": through_ddp[0]}))
dist.destroy_process_group()
"""


def test_prompt_rounds_and_prompted_validation_under_two_ranks(tmp_path):
    """The building blocks under real gloo ranks, even when given the DDP-wrapped model: the correction rounds run
    the unwrapped network (rank 1 runs several, rank 0 none, with no DDP forward and so no buffer broadcast between
    them), and prompted validation scores each case on one rank only and returns, on every rank, the single-process
    score."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "CADExtension")}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [row["rank"] for row in rows] == [0, 1]
    assert rows[0]["rounds"] == 0 and rows[1]["rounds"] > 0
    # none of it went through DDP's forward: its buffer broadcasts would pair up wrongly across ranks (gloo does not
    # always hang on that; it may just mix the messages), so the wrapper's own calls are counted
    assert [row["through_ddp"] for row in rows] == [0, 0]
    # 3 cases x 3 clicks (the answer is never right): rank 0 scores cases 0 and 2, rank 1 case 1
    assert [row["validation_calls"] for row in rows] == [6, 3]
    assert rows[0]["score"] == rows[1]["score"] == pytest.approx(rows[0]["single"])
