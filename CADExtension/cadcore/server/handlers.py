"""What each endpoint computes, in plain functions (no HTTP here): the command line's own checks, library calls and
reports, so an answer equals what ``cad interact`` / ``cad segment`` / ``cad classify`` would have written, and a
refusal is the line they would have printed (``cad <command>: error: FILE: problem``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from cadcore.errors import CadError
from cadcore.io.images import read_image
from cadcore.io.labelmaps import write_labelmap
from cadcore.io.writing import all_or_none, write_image
from cadcore.registry import list_all
from cadcore.segmentation.interactive import InteractiveSession, PackageRegions, Prompts
from cadcore.segmentation.interactive_request import check_interact_request, interact_report, label_entry
from cadcore.server.jobs import JobSlot, ModelCache, key_of
from cadcore.server.payloads import (
    ApiError,
    bad_request,
    decode_file,
    encode_file,
    flag,
    integer,
    optional_numbers,
    points,
    text,
)
from cadcore.server.runner import ServeOptions
from cadcore.server.sessions import Session, SessionStore


@dataclass
class ServerContext:
    store: SessionStore
    cache: ModelCache
    slot: JobSlot
    device: torch.device
    cap: int  # bytes: the largest upload, inflated file or JSON body
    version: str

    @classmethod
    def create(cls, options: ServeOptions, device: torch.device, version: str) -> ServerContext:
        """A fresh store (its temporary root made now), an empty model cache and the job lock, from the flags."""
        store = SessionStore(options.max_sessions, options.session_ttl)
        cache = ModelCache(int(options.models_memory_gb * 2 ** 30), store.drop_model)
        return cls(store, cache, JobSlot(options.job_timeout), device, int(options.max_upload_mb * 2 ** 20), version)


@contextmanager
def as_api_errors(command: str) -> Iterator[None]:
    """A refusal of the engine becomes the CLI's one line under HTTP 400 (``cad <command>: error: ...``)."""
    try:
        yield
    except CadError as exc:
        raise bad_request(command, str(exc)) from exc
    except OSError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise bad_request(command, f"{where}{exc.strerror or exc}") from exc


def model_name(body: dict[str, Any], command: str) -> str:
    """A registry id only: a client never names a folder on the server's disk (``cad models import`` it there)."""
    model = text(body, "model", command)
    if any(c in model for c in "/\\") or model.startswith((".", "~")) or len(model) > 200:
        raise bad_request(command, f"{model[:200]}: the server takes registry ids only (see GET /models); import a "
                                   f"package or bundle on the server with cad models import")
    return model


def warm_imports() -> None:
    """Import, before announcing the server ready, what a first prompt would import (MONAI's networks, imported
    lazily by the weights check: ~1.5 s of a 2-core CPU), so the first prompt costs only its own work."""
    import monai.networks.nets  # noqa: F401


def health(ctx: ServerContext) -> dict[str, Any]:
    return {"status": "ok", "version": ctx.version, "device": str(ctx.device), "sessions": len(ctx.store),
            "models_loaded": ctx.cache.loaded()}


def models() -> dict[str, Any]:
    with as_api_errors("models"):
        return {"models": [model.as_json() for model in list_all()]}


def interact(ctx: ServerContext, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    """One prompt on a warm :class:`InteractiveSession` per (session, model): the second prompt in a region reads
    and resamples nothing and, for a plain model, runs no network (``report["reused"]``)."""
    started = time.perf_counter()
    command = "interact"
    model, label = model_name(body, command), integer(body, "label", command)
    positive, negative = points(body, "positive", command), points(body, "negative", command)
    box = optional_numbers(body, "box", 6, command, "[R0, A0, S0, R1, A1, S1] in mm")
    uncertainty = flag(body, "uncertainty", command)
    source = str(session.input)
    with as_api_errors(command):
        package = check_interact_request(model, label, positive, box, body.get("scribble") is not None, uncertainty,
                                         source)
        with ctx.slot.hold():
            entry = ctx.cache.admit(package)
            package = entry.package
            scribble = decode_file(body.get("scribble"), "scribble", session.folder, "scribble", ctx.cap, command)
            previous = decode_file(body.get("previous"), "previous", session.folder, "previous", ctx.cap, command)
            prompts = Prompts(positive, negative, (tuple(box[:3]), tuple(box[3:])) if box else None,  # type: ignore
                              read_image(scribble) if scribble else None, read_image(previous) if previous else None)
            key = key_of(package)
            warm = session.warm.get(key)
            if warm is None:
                warm = InteractiveSession(package, session.image, ctx.device, source=source)
                if isinstance(warm.model, PackageRegions) and entry.network is not None:
                    warm.model.network = entry.network  # loaded once per server, shared by every session
                session.warm[key] = warm
            result = warm.segment(prompts, label, uncertainty=uncertainty)
            if isinstance(warm.model, PackageRegions):
                entry.network = warm.model.network
        mask_path = session.folder / "mask.nrrd"
        uncertainty_path = session.folder / "uncertainty.nrrd" if result.uncertainty is not None else None
        report = interact_report(package, label, prompts, result, session.image, {
            "input": source, "output": str(mask_path),
            "uncertainty": str(uncertainty_path) if uncertainty_path else None}, started)
        with all_or_none(replace=True):
            write_labelmap(result.mask, mask_path, [{**label_entry(package, label), "value": 1}])
            if uncertainty_path is not None:
                write_image(result.uncertainty, uncertainty_path)
        return {"report": report, "mask": encode_file(mask_path),
                "uncertainty": encode_file(uncertainty_path) if uncertainty_path else None}


def segment(ctx: ServerContext, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    """The whole volume, as ``cad segment`` (same model checks, same sidecar); the labels as a ``.seg.nrrd``."""
    from cadcore.segmentation.outputs import sidecar
    from cadcore.segmentation.predict import segment_image, segmentation_model

    started = time.perf_counter()
    command = "segment"
    model, fast, cascade = model_name(body, command), flag(body, "fast", command), flag(body, "cascade", command, True)
    overlap = body.get("overlap")
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))):
        raise bad_request(command, "request: 'overlap' must be null or a number")
    with as_api_errors(command):
        package = segmentation_model(model, overlap, fast)
        with ctx.slot.hold():
            package = ctx.cache.admit(package).package
            result = segment_image(session.image, package, ctx.device.type, overlap, None, False, cascade, None, fast)
        output = session.folder / "labelmap.seg.nrrd"
        report = sidecar(package, result, session.image, time.perf_counter() - started, {
            "input": str(session.input), "output": str(output), "probabilities": None, "overlay_png": None})
        with all_or_none(replace=True):
            write_labelmap(result.labels, output, package.labels)
        return {"report": report, "labelmap": encode_file(output)}


def classify(ctx: ServerContext, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    """A lesion (``mask``) or an ROI centre (``center``), as ``cad classify`` (no heatmap): its result JSON."""
    from cadcore.classification.predict import classify_image
    from cadcore.registry.packages import find_model

    command = "classify"
    model = model_name(body, command)
    centre = optional_numbers(body, "center", 3, command, "[R, A, S] in mm")
    with as_api_errors(command):
        if body.get("mask") is not None and centre is not None:
            raise CadError("give either --mask/--label or --center/--size, not both")
        package = find_model(model)
        if package.task != "classification":
            raise CadError(f"is a {package.task} model; cad classify needs a classification model", package.folder)
        mask_path = decode_file(body.get("mask"), "mask", session.folder, "mask-in", ctx.cap, command)
        mask = read_image(mask_path) if mask_path else None
        with ctx.slot.hold():
            package = ctx.cache.admit(package).package
            result = classify_image(session.image, package, mask, None, centre, None, False, None, ctx.device.type,
                                    source=str(mask_path or session.input))
        return {"report": result.report}


def describe_session(ctx: ServerContext, session: Session) -> dict[str, Any]:
    image = session.image
    if image is None:
        raise ApiError(500, "cad serve: internal error: the session has no volume")
    return {"session": session.id, "size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "expires_s": ctx.store.ttl}
