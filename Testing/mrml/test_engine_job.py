"""The shared run/wait/cancel/notify plumbing of the Logics (``CADExtensionLib.engine_job``), on a minimal Logic.

The engine is a stand-in script run by the real :class:`SubprocessRunner` (``SlowRunner`` for runs that must still
be going when the test acts), so the threading and cancel rules are checked without torch or MRML.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.process import SubprocessRunner

from .test_segmentation_logic import SlowRunner, _wait_for

SUCCEEDS = r"""
import sys
for line in ["job:  10%|#", "job:  10%|#", "hello", "job:  50%|#####", "job: 100%|##########"]:
    print(line, flush=True)
open(sys.argv[1], "w").write("result")
"""
FAILS = "print('some output'); print('cad job: error: input.nrrd: broken', flush=True); raise SystemExit(2)"


class JobCancelled(RuntimeError):
    pass


@dataclass
class _Run(EngineRun):
    outputPath: Path


class JobLogic(EngineJobLogic[_Run]):
    """The smallest Logic: runs ``script`` with the output path as its argument and returns what it wrote."""

    logPrefix = "Job"
    taskName = "job"
    busyMessage = "a job is already running"
    workspacePrefix = "Job-"
    cancelledError = JobCancelled
    onImport = None

    def run(self, script: str = SUCCEEDS, wait: bool = True, onProgress=None, onLog=None, onFinished=None):
        def makeRun(workspace):
            return _Run(workspace.path / "out.txt", workspace=workspace, onProgress=onProgress, onLog=onLog,
                        onFinished=onFinished)

        def prepare(run):
            return [sys.executable, "-c", script, str(run.outputPath)], {}

        return self._runJob(makeRun, prepare, wait)

    def _importResult(self, run: _Run) -> str:
        if self.onImport is not None:
            self.onImport()
        return run.outputPath.read_text()


@pytest.mark.parametrize("defer", [False, True], ids=["direct-callbacks", "deferred-callbacks"])
def test_success_reports_progress_log_and_result_and_leaves_nothing(work, caplog, defer):
    progress: list[int] = []
    logs: list[str] = []
    finished: list[tuple] = []
    logic = JobLogic(runner=SubprocessRunner(deferCallbacks=defer), temporaryFolder=work)
    with caplog.at_level(logging.INFO):
        result = logic.run(onProgress=progress.append, onLog=logs.append,
                           onFinished=lambda *args: finished.append(args))
    assert result == "result" and finished == [("result", None)]
    assert progress == [10, 50, 100] and logs == ["hello"]  # bar redraws are never logged, repeats not reported
    assert "Job: running " in caplog.text
    assert list(work.iterdir()) == [] and not logic.isRunning() and logic.cancel() is False


def test_failure_raises_the_engines_error_line_and_notifies(work):
    finished: list[tuple] = []
    logic = JobLogic(runner=SubprocessRunner(), temporaryFolder=work)
    with pytest.raises(RuntimeError, match=r"^job failed: cad job: error: input.nrrd: broken$"):
        logic.run(FAILS, onFinished=lambda *args: finished.append(args))
    assert finished == [(None, "job failed: cad job: error: input.nrrd: broken")]
    assert list(work.iterdir()) == [] and not logic.isRunning()


def test_a_second_run_is_refused_while_one_runs_then_cancel_frees_the_logic(work):
    finished: list[tuple] = []
    logic = JobLogic(runner=SlowRunner(), temporaryFolder=work)
    assert logic.run(wait=False, onFinished=lambda *args: finished.append(args)) is None
    assert logic.isRunning()
    with pytest.raises(RuntimeError, match="a job is already running"):
        logic.run(wait=False)
    assert len(list(work.iterdir())) == 1  # the refused run made no workspace

    assert logic.cancel() is True
    assert finished == [(None, "cancelled")] and list(work.iterdir()) == [] and not logic.isRunning()
    assert logic.cancel() is False  # nothing left to cancel


def test_cancel_is_refused_once_the_result_is_being_imported(work):
    logic = JobLogic(runner=SubprocessRunner(), temporaryFolder=work)
    answers: list[bool] = []
    logic.onImport = lambda: answers.append(logic.cancel())
    assert logic.run() == "result"
    assert answers == [False] and list(work.iterdir()) == []


def test_cancel_inside_a_runner_callback_does_not_deadlock(work):
    """onLog runs on the runner's reader thread, which ``cancel`` must not wait for."""
    logic = JobLogic(runner=SlowRunner(), temporaryFolder=work)
    answers: list[bool] = []
    finished: list[tuple] = []
    with pytest.raises(JobCancelled, match="^job cancelled$"):
        logic.run(onLog=lambda line: answers.append(logic.cancel()), onFinished=lambda *args: finished.append(args))
    assert answers == [True] and finished == [(None, "cancelled")]
    assert list(work.iterdir()) == [] and not logic.isRunning()


def test_cancel_from_another_thread_stops_a_blocking_run(work):
    logic = JobLogic(runner=SlowRunner(), temporaryFolder=work)
    threads: list[threading.Thread] = []

    def onLog(line: str) -> None:
        threads.append(threading.Thread(target=logic.cancel))
        threads[-1].start()

    with pytest.raises(JobCancelled):
        logic.run(onLog=onLog)
    for thread in threads:
        thread.join(10)
    assert list(work.iterdir()) == [] and not logic.isRunning()


@pytest.mark.parametrize("wait", [True, False], ids=["blocking", "non-blocking"])
def test_on_finished_exceptions_are_logged_not_raised(work, caplog, wait):
    def onFinished(result, error):
        raise ValueError("broken callback")

    logic = JobLogic(runner=SubprocessRunner(deferCallbacks=True), temporaryFolder=work)
    result = logic.run(wait=wait, onFinished=onFinished)
    if not wait:
        _wait_for(lambda: logic.processEvents() >= 0 and not logic.isRunning())
    assert result == ("result" if wait else None)
    assert "Job: error in onFinished" in caplog.text and "broken callback" in caplog.text
    assert list(work.iterdir()) == []


def test_non_blocking_failure_is_logged_and_notified(work, caplog):
    finished: list[tuple] = []
    logic = JobLogic(runner=SubprocessRunner(deferCallbacks=True), temporaryFolder=work)
    logic.run(FAILS, wait=False, onFinished=lambda *args: finished.append(args))
    _wait_for(lambda: logic.processEvents() >= 0 and bool(finished))
    assert finished == [(None, "job failed: cad job: error: input.nrrd: broken")]
    assert "Job: job failed: cad job: error" in caplog.text
    assert list(work.iterdir()) == [] and not logic.isRunning()


def test_a_failing_preparation_leaves_no_workspace_and_a_free_logic(work):
    logic = JobLogic(runner=SubprocessRunner(), temporaryFolder=work)

    def broken(run):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        logic._runJob(lambda workspace: _Run(workspace.path / "out.txt", workspace=workspace), broken, True)
    assert list(work.iterdir()) == [] and not logic.isRunning()
    assert logic.run() == "result"
