"""The background-process runner for real: merged output, \\r splitting, exit codes, deferred callbacks, killing
the whole process tree on cancel, temporary folders, and which Python runs the engine."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from CADExtensionLib.process import CANCELLED, ProcessRunner, SubprocessRunner, TemporaryWorkspace, pythonExecutable

from .conftest import processAlive

CHATTY = r"""
import sys, time
print("hello from stdout", flush=True)
sys.stderr.write("warning on stderr\n"); sys.stderr.flush()
for p in (10, 55, 100):
    sys.stderr.write(f"\rnetwork: {p:3d}%|##  |"); sys.stderr.flush()
sys.stderr.write("\n")
print("caf\u00e9 d\u00e9j\u00e0 vu", flush=True)
sys.exit(3)
"""

# Starts a grandchild (as torch DataLoader workers would) and reports both pids, then sleeps.
TREE = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(f"pids {child.pid}", flush=True)
time.sleep(60)
"""


def test_subprocess_runner_is_a_process_runner():
    assert isinstance(SubprocessRunner(), ProcessRunner)


def test_output_is_merged_split_on_carriage_returns_and_exit_code_reported():
    lines: list[str] = []
    finished: list[object] = []
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", CHATTY], {"PYTHONIOENCODING": "utf-8"}, lines.append, finished.append)
    assert runner.wait(30) == 3
    assert finished == [3] and not runner.isRunning()
    assert lines == ["hello from stdout", "warning on stderr", "network:  10%|##  |", "network:  55%|##  |",
                     "network: 100%|##  |", "caf\u00e9 d\u00e9j\u00e0 vu"]


def test_deferred_callbacks_run_on_the_dispatching_thread():
    """Slicer mode: nothing reaches the callbacks until the main thread dispatches them."""
    threads: set[int] = set()
    lines: list[str] = []

    def onLine(line: str) -> None:
        threads.add(threading.get_ident())
        lines.append(line)

    runner = SubprocessRunner(deferCallbacks=True)
    runner.start([sys.executable, "-c", "print('a'); print('b')"], None, onLine,
                 lambda code: threads.add(threading.get_ident()))
    deadline = time.monotonic() + 30
    while runner.isRunning() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines == []  # the process is done, but nothing was delivered behind our back
    assert runner.dispatchPendingCallbacks() == 3
    assert lines == ["a", "b"] and threads == {threading.get_ident()}
    assert runner.wait(1) == 0


def test_cancel_kills_the_whole_process_tree():
    lines: list[str] = []
    finished: list[object] = []
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", TREE], None, lines.append, finished.append)
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines, "the test script did not start"
    parent, child = runner.pid, int(lines[0].split()[1])
    assert processAlive(parent) and processAlive(child)
    runner.cancel()
    assert runner.wait(10) == CANCELLED
    assert finished == [CANCELLED]
    deadline = time.monotonic() + 5
    while processAlive(child) and time.monotonic() < deadline:  # the orphan is reaped by init, not by us
        time.sleep(0.02)
    assert not processAlive(parent) and not processAlive(child)
    runner.cancel()  # cancelling a finished run is a no-op


def test_start_refuses_while_running_and_wait_times_out():
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError):
            runner.start([sys.executable, "-c", "pass"])
        assert runner.wait(0.1) is None
    finally:
        runner.cancel()
    assert runner.wait(10) == CANCELLED


def test_temporary_workspace_is_removed_in_every_outcome(tmp_path):
    with TemporaryWorkspace(parent=tmp_path) as workspace:
        (workspace.path / "input.nrrd").write_bytes(b"x" * 100)
    assert not workspace.path.exists() and workspace.removed

    with pytest.raises(KeyError), TemporaryWorkspace(parent=tmp_path) as failing:
        (failing.path / "sub").mkdir()
        (failing.path / "sub" / "f").write_text("y")
        raise KeyError("boom")
    assert not failing.path.exists()

    manual = TemporaryWorkspace(parent=tmp_path)
    manual.cleanup()
    manual.cleanup()  # idempotent: cancel and the finished handler may both call it
    assert not manual.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_python_executable_outside_and_inside_slicer(fakeSlicerApp, monkeypatch, tmp_path):
    monkeypatch.delattr("slicer.app")
    assert pythonExecutable() == sys.executable  # slicer-core: no application, this interpreter runs the engine

    import slicer

    monkeypatch.setattr(slicer, "app", fakeSlicerApp, raising=False)
    binDir = tmp_path / "Slicer-5.13" / "bin"
    binDir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(binDir / "SlicerApp-real"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        pythonExecutable()
    launcher = binDir / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.write_text("")
    assert Path(pythonExecutable()) == launcher


ROLLBACK = r"""
import signal, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
def on_term(signum, frame):
    marker.write_text("rolled back")  # what cad does on SIGTERM: remove what it published, then exit 143
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(60)
"""

STUBBORN = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stuck native call: SIGTERM does nothing
print("ready", flush=True)
time.sleep(60)
"""


def _started(script: str, *args: str) -> tuple[SubprocessRunner, list[str]]:
    lines: list[str] = []
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", script, *args], None, lines.append)
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines == ["ready"]
    return runner, lines


def test_cancel_lets_the_engine_roll_back_first(tmp_path):
    """Cancel sends SIGTERM first: the engine's own rollback runs (Slicer's Cancel used to SIGKILL at once, leaving
    the rollback no chance)."""
    marker = tmp_path / "marker"
    runner, _ = _started(ROLLBACK, str(marker))
    runner.cancel()
    assert runner.wait(10) == CANCELLED
    assert marker.read_text() == "rolled back"


def test_cancel_kills_an_engine_that_ignores_sigterm_after_the_grace(monkeypatch):
    import CADExtensionLib.process as process

    monkeypatch.setattr(process, "CANCEL_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(process.terminateProcessTree, "__defaults__", (0.5,))
    runner, _ = _started(STUBBORN)
    pid = runner.pid
    started = time.monotonic()
    runner.cancel()
    assert runner.wait(10) == CANCELLED
    assert time.monotonic() - started < 8 and not processAlive(pid)
