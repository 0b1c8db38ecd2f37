"""``cad batch``: segment a cohort (a folder, a CSV or a dataset.json) with the model loaded once per worker.

Everything that can refuse the run is checked before any case is read (exit 2, one line, nothing written): the
inputs and their ids, the model, the format (``--format dcm`` needs DICOM series inputs), ``--shard``, and an output
folder that already holds results (``--resume`` continues, ``--force`` redoes). Then each case is read (one ahead of
the network), segmented and written; a bad case becomes a ``failed`` row of the summary and the batch goes on.
Exit 0 when every case is ``ok``, 1 when some failed.

Workers: ``--workers N`` starts N processes (``spawn``: no torch state is forked), each loading the model once and
given its next case whenever it finishes one, with ``cpu_count // N`` torch threads each (at least 1;
``OMP_NUM_THREADS``, when set, wins). One worker runs in this process with
:func:`cadcore.device.configure_cpu_threads`' count. Only this process writes ``summary.csv`` and stdout, so lines
never interleave; each worker writes its own cases' outputs.
A worker that dies (out of memory, killed) fails the case it was running; the case it was reading ahead goes to
another worker, and the others go on.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import queue
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from cadcore.cli.batch_run import Options, one_line, remove_outputs, run_cases
from cadcore.cli.batch_summary import columns, complete, merge, read_summary, summary_name, write_summary
from cadcore.errors import CadError
from cadcore.io.batch_inputs import Case, find_cases, parse_shard, take_shard
from cadcore.io.writing import check_output_file, check_output_folder, refuse_existing
from cadcore.progress import StagedProgress
from cadcore.registry.networks import reuse_networks


def run(args: argparse.Namespace) -> int:
    if args.merge:
        return _merge(args)
    if not args.inputs or not args.model:
        raise CadError("cad batch needs INPUTS, -m MODEL and -o OUT_DIR (or --merge OUT_DIR ... -o SUMMARY.csv)")
    if args.workers < 1:
        raise CadError(f"--workers must be at least 1, got {args.workers}")
    if args.resume and args.force:
        raise CadError("--resume continues a batch and --force redoes it: give one of them")
    shard = parse_shard(args.shard) if args.shard else None
    out_dir = check_output_folder(args.output)
    from cadcore.segmentation.predict import segmentation_model

    # a bundle or a pipeline model has no uncertainty: one line now, not one failed row per case
    package = segmentation_model(args.model, None, args.fast, False, args.uncertainty)
    package.verify()
    cases = take_shard(find_cases(args.inputs, exclude=out_dir), shard)
    if args.format == "dcm":
        for case in cases:
            if not case.dicom:
                raise CadError("--format dcm (DICOM SEG) needs DICOM series inputs; this case is a file", case.input)
    options = Options(str(args.model), str(out_dir), args.format, args.device, args.fast, args.uncertainty)
    summary_path = out_dir / summary_name(shard)
    header = columns(package.labels)
    rows = _previous_rows(args, summary_path, header, cases, options, package.id)
    to_run = [case for case in cases if case.id not in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(f".{glob.escape(summary_path.name)}.*"):  # a killed run's temporary summary
        shutil.rmtree(leftover, ignore_errors=True)
    write_summary(summary_path, header, rows)
    workers = min(args.workers, max(1, len(to_run)))
    print(f"batch: {len(to_run)} cases to run ({len(rows)} already complete), {workers} worker"
          f"{'s' if workers > 1 else ''}", flush=True)
    progress = StagedProgress({"batch": 1})
    finished = [0]

    def on_done(row: dict[str, str]) -> None:
        rows[row["id"]] = row
        write_summary(summary_path, header, rows)
        status = f"ok ({float(row['seconds']):.1f} s)" if row["status"] == "ok" else f"failed: {row['error']}"
        print(f"case {row['id']}: {status}", flush=True)
        finished[0] += 1
        progress.update("batch", finished[0] / max(1, len(to_run)))

    completed = False
    try:
        replace = bool(args.force or args.resume)
        if workers == 1:
            from cadcore.device import configure_cpu_threads

            configure_cpu_threads()
            with reuse_networks():
                run_cases(to_run, package, options, replace, lambda case: None, on_done,
                          lambda stage, fraction: progress.update("batch", (finished[0] + fraction) / len(to_run)))
        else:
            _run_workers(to_run, options, replace, workers, on_done, package.labels)
        completed = True
    finally:
        progress.close(completed)
    failed = sum(1 for row in rows.values() if row["status"] != "ok")
    print(f"batch: {len(rows) - failed} ok, {failed} failed, summary {summary_path}", flush=True)
    return 0 if failed == 0 else 1


def _previous_rows(args: argparse.Namespace, summary_path: Path, header: list[str], cases: list[Case],
                   options: Options, model_id: str) -> dict[str, dict[str, str]]:
    """The rows ``--resume`` keeps (complete cases); without ``--resume``/``--force`` earlier results are refused."""
    existing = [path for case in cases for path in options.files(case.id) if path.exists()]
    if not args.resume:
        refuse_existing(summary_path.exists() or bool(existing), "the output folder already holds results of a "
                        "batch", existing[0] if existing and not summary_path.exists() else summary_path,
                        args.force, resume=False, verb="redo every case")
        return {}
    if not summary_path.exists():
        return {}
    old_header, old_rows = read_summary(summary_path)
    if old_header != header:
        raise CadError("was written by a batch with another model (other label columns); resume it with that "
                       "model or choose another output folder", summary_path)
    return {case.id: old_rows[case.id] for case in cases
            if complete(old_rows.get(case.id), options.files(case.id), model_id)}


def _run_workers(cases: list[Case], options: Options, replace: bool, workers: int, on_done: Any,
                 labels: list[dict[str, Any]]) -> None:
    """N spawned processes, each fed by its own queue; their rows come back here in the order they finish.

    Each worker holds at most two cases (the one running and the one being read ahead); the next is sent when a row
    comes back, and the end marker only once every case is reported. So this process always knows which cases a
    worker holds: when one dies, the case it was running is failed (it may be what killed it) and the one it was
    reading goes to a live worker. Cases left when no worker is alive are failed rows ("run again with --resume"),
    never missing."""
    from collections import deque

    from cadcore.cli.batch_run import summary_row

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    inboxes = [context.Queue() for _ in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [context.Process(target=worker_main, args=(index, options, replace, threads, inboxes[index],
                                                           results), daemon=True, name=f"cad-batch-{index}")
                 for index in range(workers)]
    pending = deque(cases)
    held: dict[int, list[Case]] = {index: [] for index in range(workers)}
    running: dict[int, Case] = {}
    exited: set[int] = set()
    ended: set[int] = set()
    reported: set[str] = set()

    def report(row: dict[str, str]) -> None:
        reported.add(row["id"])
        on_done(row)

    def feed() -> None:
        for index in range(workers):
            if index in exited or index in ended:
                continue
            while len(held[index]) < 2 and pending:
                held[index].append(pending.popleft())
                inboxes[index].put(held[index][-1])
            if len(reported) == len(cases):  # the end marker only now: a dead worker's cases may still come back
                inboxes[index].put(None)
                ended.add(index)

    def stopped(index: int, problem: str | None) -> None:
        exited.add(index)
        case = running.pop(index, None)
        if problem is not None and case is not None:
            # it may have died after publishing some or all of the case's files but before saying so: a failed row
            # leaves nothing that looks valid (every file of a started case is this run's: earlier results were
            # refused, or removed by --force/--resume before the case started)
            remove_outputs(options, case.id)
            report(summary_row(case, options, labels, 0.0, None, problem))
        pending.extendleft(reversed([held_case for held_case in held.pop(index, [])
                                     if case is None or held_case.id != case.id]))
        feed()

    for process in processes:
        process.start()
    feed()
    problem = "no worker started"
    try:
        while len(exited) < workers:
            try:
                kind, index, payload = results.get(timeout=0.5)
            except queue.Empty:
                for index, process in enumerate(processes):
                    if index not in exited and not process.is_alive() and process.exitcode != 0:
                        problem = f"worker process died (exit code {process.exitcode})"  # killed, out of memory
                        stopped(index, problem)
                continue
            if kind == "start":
                running[index] = payload
            elif kind == "row":
                running.pop(index, None)
                held[index] = [case for case in held[index] if case.id != payload["id"]]
                report(payload)
                feed()
            elif kind == "fatal":
                problem = f"worker could not start: {payload}"
                sys.stderr.write(f"cad batch: worker {index}: {payload}\n")
            else:
                stopped(index, None)
        for case in cases:
            if case.id not in reported:
                report(summary_row(case, options, labels, 0.0, None,
                                   f"not run: every worker stopped ({problem}); run again with --resume"))
    finally:
        for process in processes:  # after their end marker they are exiting: give them a moment, then insist
            process.join(timeout=30 if len(exited) == workers else 0.1)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


def worker_main(index: int, options: Options, replace: bool, threads: int, tasks: Any, results: Any) -> None:
    """A worker process: load the model once, then take cases from its queue until the end marker."""
    from cadcore.cli.signals import interrupt_on_signals

    restore = interrupt_on_signals()  # SIGTERM rolls back the case being written, as in cad segment
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops the workers
    try:
        import torch

        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(threads)
        from cadcore.segmentation.predict import segmentation_model

        package = segmentation_model(options.model, None, options.fast, False)
        with reuse_networks():
            run_cases(iter(tasks.get, None), package, options, replace,
                      lambda case: results.put(("start", index, case)),
                      lambda row: results.put(("row", index, row)))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - reported by the parent, whose other workers go on
        results.put(("fatal", index, one_line(exc)))
    finally:
        restore()  # the interpreter's own shutdown must not be interrupted
        results.put(("exit", index, None))


def _merge(args: argparse.Namespace) -> int:
    output = check_output_file(args.output, args.force, "merged summary exists")
    if not output.name.lower().endswith(".csv"):
        raise CadError("the merged summary must be a .csv file", output)
    ok, failed = merge([Path(folder) for folder in args.merge], output)
    print(f"batch: {ok} ok, {failed} failed, summary {output}", flush=True)
    return 0 if failed == 0 else 1
