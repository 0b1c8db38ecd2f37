"""A real ``cad serve`` for the tests: the app under uvicorn on a loopback socket (port 0) in a background thread,
or the command itself in a subprocess, and a small urllib client (the same calls the Slicer glue makes)."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from cadcore import __version__
from cadcore.server.app import create_app
from cadcore.server.handlers import ServerContext
from cadcore.server.runner import ServeOptions, build_server
from cadcore.server.security import write_new_token

SAMPLES = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
CASES = sorted((SAMPLES / "imagesTr").glob("*.nii.gz"))
CASE = SAMPLES / "imagesTr" / "hippocampus_015.nii.gz"
TRUTH = SAMPLES / "labelsTr" / "hippocampus_015.nii.gz"
MODEL = "hippocampus-unet"


def centre_click(label: sitk.Image, value: int) -> list[float]:
    """RAS mm of the label's voxel nearest its centroid (a click a user would make)."""
    hits = np.argwhere(sitk.GetArrayViewFromImage(label) == value)
    voxel = hits[np.argmin(((hits - hits.mean(0)) ** 2).sum(1))]
    x, y, z = label.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])
    return [-x, -y, z]


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def error(self) -> str:
        return self.body["error"]


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             token: str | None = "default") -> Answer:
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw = response.read()
                return Answer(response.status, json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return Answer(exc.code, json.loads(raw) if raw else None)

    def post_json(self, path: str, body: dict[str, Any], **kwargs: Any) -> Answer:
        return self.call("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}, **kwargs)

    def upload(self, path: Path, name: str | None = None, gzipped: bool = False) -> Answer:
        data = path.read_bytes()
        headers = {"Content-Type": "application/octet-stream"}
        if gzipped:
            data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
        return self.call("POST", f"/sessions?name={name or path.name}", data, headers)

    def interact(self, session: str, **body: Any) -> Answer:
        return self.post_json(f"/sessions/{session}/interact", {"model": MODEL, "label": 1, **body})


def as_file(path: Path) -> dict[str, str]:
    return {"name": path.name, "data": base64.b64encode(gzip.compress(path.read_bytes())).decode()}


def read_file(value: dict[str, str], folder: Path) -> sitk.Image:
    """An API ``<file>`` written under its own name in ``folder``, read back."""
    path = folder / Path(value["name"]).name
    path.write_bytes(gzip.decompress(base64.b64decode(value["data"])))
    return sitk.ReadImage(str(path))


@dataclass
class Running:
    client: Client
    context: ServerContext
    url: str
    token: str


@contextmanager
def running_server(tmp: Path, **options: Any) -> Iterator[Running]:
    """The app (as ``cad serve`` builds it) on 127.0.0.1, port 0, served by uvicorn in a thread until the block
    ends; its session folders are removed at shutdown like the command's."""
    settings = ServeOptions(**{"port": 0, "ready_file": tmp / "ready.json", **options})
    token = write_new_token(tmp / "token")
    context = ServerContext.create(settings, torch.device("cpu"), __version__)
    server, sock = build_server(create_app(context, token, sweep_period=0.1), settings, __version__)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    url = json.loads(settings.ready_file.read_text())["url"]
    try:
        yield Running(Client(url, token), context, url, token)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
