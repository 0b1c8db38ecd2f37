"""Prompt latency through ``cad serve`` (issue 16): the first prompt on a new volume (upload included), then N warm
prompts, beside the same first prompt run cold through ``cad interact`` (a new process: start-up, imports, reading).

The server runs as the Slicer glue starts it (``python -m cadcore serve --port 0 --token-file F --ready-file R``) on
loopback; latencies are the client's wall time per request (JSON in, mask NRRD back, decoded), so they are what the
Segment Editor effect waits. Warm prompts are clicks jittered uniformly by up to ``--jitter`` mm around the first
(seeded), so each one asks for a new region, as a user clicking around a structure does; a plain model then runs its
network on every prompt (no cached region), which is the cost the issue's targets bound.

    .venv/bin/python benchmarks/server_latency.py --model hippocampus-unet --image IMAGE.nii.gz \\
        --label-file LABEL.nii.gz --label 1 --prompts 20 --json benchmarks/results/server_latency_hippocampus.json
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interactive import deepest_ras, largest_component  # noqa: E402 (the interactive benchmark's first click)

from cadcore.server.security import write_new_token  # noqa: E402


def call(url: str, token: str, path: str, data: bytes, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(url + path, data, {**headers, "Authorization": f"Bearer {token}"}, method="POST")
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def prompt(url: str, token: str, session: str, model: str, label: int, click: list[float]) -> tuple[float, dict]:
    """One prompt's wall time, its mask decoded (as the client must), and the report."""
    started = time.perf_counter()
    answer = call(url, token, f"/sessions/{session}/interact",
                  json.dumps({"model": model, "label": label, "positive": [click]}).encode(),
                  {"Content-Type": "application/json"})
    gzip.decompress(base64.b64decode(answer["mask"]["data"]))
    return time.perf_counter() - started, answer["report"]


def start_server(folder: Path, device: str) -> tuple[subprocess.Popen, str, str, float]:
    token = write_new_token(folder / "token")
    ready = folder / "ready.json"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cadcore", "serve", "--port", "0", "--token-file",
                                str(folder / "token"), "--ready-file", str(ready), "--device", device],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not ready.is_file():
        if process.poll() is not None:
            raise SystemExit(f"cad serve did not start: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["url"], token, time.perf_counter() - started


def cold_prompt(image: Path, model: str, label: int, click: list[float], device: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cadcore", "interact", str(image), "-m", model, "-o",
                        str(Path(folder) / "mask.nrrd"), "--label", str(label), "--device", device,
                        f"--click=+{click[0]},{click[1]},{click[2]}"], check=True, capture_output=True)
        return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True, type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--click", type=lambda t: [float(v) for v in t.split(",")], help="R,A,S in mm")
    where.add_argument("--label-file", type=Path, help="take the deepest point of --label-value's largest component")
    parser.add_argument("--label", type=int, required=True, help="the model's label to prompt")
    parser.add_argument("--label-value", type=int, default=None, help="value in --label-file (default: --label)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--jitter", type=float, default=3.0, help="mm, each axis")
    parser.add_argument("--cold", type=int, default=1, help="cad interact processes to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.label_file is not None:
        truth = sitk.ReadImage(str(args.label_file))
        value = args.label if args.label_value is None else args.label_value
        click = [round(v, 3) for v in deepest_ras(largest_component(sitk.GetArrayFromImage(truth) == value), truth)]
    else:
        click = args.click
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        process, url, token, start_s = start_server(Path(folder), args.device)
        try:
            data = args.image.read_bytes()
            compressed = data[:2] == b"\x1f\x8b"
            started = time.perf_counter()
            session = call(url, token, f"/sessions?name={args.image.name}", data if compressed else gzip.compress(data),
                           {} if compressed else {"Content-Encoding": "gzip"})["session"]
            upload_s = time.perf_counter() - started
            first_s, first = prompt(url, token, session, args.model, args.label, click)
            warm, reports = [], []
            for _ in range(args.prompts):
                jittered = [round(v + float(rng.uniform(-args.jitter, args.jitter)), 3) for v in click]
                seconds, report = prompt(url, token, session, args.model, args.label, jittered)
                warm.append(seconds)
                reports.append(report)
        finally:
            process.terminate()
            process.wait(timeout=60)
    cold = [cold_prompt(args.image, args.model, args.label, click, args.device) for _ in range(args.cold)]
    result = {
        "model": args.model, "image": str(args.image), "label": args.label, "click": click, "device": args.device,
        "cpu_count": os.cpu_count(), "jitter_mm": args.jitter, "server_start_s": round(start_s, 3),
        "upload_s": round(upload_s, 3), "first_prompt_s": round(first_s, 3),
        "upload_plus_first_prompt_s": round(upload_s + first_s, 3), "first_voxels": first["voxels"],
        "warm": {"prompts": len(warm), "median_s": percentile(warm, 50), "p90_s": percentile(warm, 90),
                 "seconds": [round(s, 4) for s in warm],
                 "server_median_s": round(statistics.median(r["timings"]["total_s"] for r in reports), 4),
                 "reused": sum(bool(r["reused"]) for r in reports),
                 "region_size": reports[-1]["region"]["size"] if reports else None},
        "cold_cli_s": [round(s, 3) for s in cold],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
