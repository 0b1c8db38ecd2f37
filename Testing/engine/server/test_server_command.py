"""``cad serve`` as the Slicer glue starts it (``python -m cadcore serve --port 0 --ready-file R``): a generated
token lands in a 0600 file, the server listens on loopback only, refuses every request without the token, and on
SIGTERM stops in one line, removing its ready file and every temporary file; bad flags are one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_client import Client

ENGINE = Path(__file__).resolve().parents[3] / "CADExtension"


def command(tmp: Path, *flags: str, token_file: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ENGINE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TMPDIR": str(tmp / "tmp"), "OMP_NUM_THREADS": "1"}
    if token_file is not None:
        env["CAD_SERVER_TOKEN_FILE"] = str(token_file)
    (tmp / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cadcore", "serve", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no ready file; stderr: {process.communicate()[1]}")
        time.sleep(0.05)
    return json.loads(path.read_text())


def non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None without one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_generated_token_loopback_only_and_a_clean_stop(tmp_path):
    token_file = tmp_path / "config" / "server-token"
    token_file.parent.mkdir()
    token_file.write_text("an old, world-readable token\n")
    token_file.chmod(0o644)
    ready = tmp_path / "ready.json"
    process = command(tmp_path, "--port", "0", "--ready-file", str(ready), "--device", "cpu", token_file=token_file)
    try:
        announced = wait_for(ready, process)
        assert announced["pid"] == process.pid and announced["version"]
        host, port = announced["url"].removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 40 and token != "an old, world-readable token"
        client = Client(announced["url"], token)
        assert client.call("GET", "/health").body["status"] == "ok"
        assert client.call("GET", "/health", token=None).status == 401
        assert client.call("GET", "/health", token=token[:-1]).status == 401
        address = non_loopback_address()
        if address is not None:  # the same port on this machine's own network address: nothing listens there
            with pytest.raises(ConnectionRefusedError), socket.create_connection((address, int(port)), timeout=5):
                pass
        session = client.upload(Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus" / "imagesTr"
                                / "hippocampus_015.nii.gz")
        assert session.status == 201
        assert any((tmp_path / "tmp").iterdir())  # the session's private folder
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip() == "cad serve: interrupted"
    assert f"token written to {token_file} (mode 0600)" in out
    assert not ready.exists() and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(("flags", "expected"), [
    (["--token-file", "{tmp}/missing"], "cad serve: error: {tmp}/missing: token file not found"),
    (["--session-ttl", "0"], "cad serve: error: --session-ttl must be greater than 0, got 0"),
    (["--ready-file", "{tmp}/no/such/ready.json"],
     "cad serve: error: {tmp}/no/such/ready.json: the ready file's folder does not exist"),
])
def test_bad_flags_are_one_line_and_nothing_listens(tmp_path, flags, expected):
    process = command(tmp_path, "--port", "0", *[f.format(tmp=tmp_path) for f in flags],
                      token_file=tmp_path / "token")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and err == expected.format(tmp=tmp_path) + "\n" and out == ""
    assert not (tmp_path / "token").exists() and list((tmp_path / "tmp").iterdir()) == []
