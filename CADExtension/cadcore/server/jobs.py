"""One compute job at a time, and the models kept loaded between jobs (least recently used dropped past a budget).

The lock serialises every network run (one GPU, or the CPU's cores, is one job's); a request that waits longer than
``--job-timeout`` gets 503 rather than queueing without bound. The cache holds each model verified once (sha256 of
its weights on first use) and, for a model package, its loaded network, which every session's warm
:class:`InteractiveSession` shares; its size is the weights file's (the parameters' bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cadcore.registry.bundles import BundleModel
from cadcore.registry.packages import ModelPackage
from cadcore.server.payloads import ApiError

ModelKey = tuple[str, str]  # (model id, folder): two folders with one id are two models


def key_of(package: ModelPackage | BundleModel) -> ModelKey:
    return package.id, str(package.folder)


def stamp_of(package: ModelPackage | BundleModel) -> tuple[int, int]:
    try:
        info = package.weights_path.stat()
    except OSError:
        return 0, 0
    return info.st_size, info.st_mtime_ns


class JobSlot:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self.lock.acquire(timeout=self.timeout):
            raise ApiError(503, f"cad serve: error: busy: another job held the engine longer than --job-timeout "
                                f"({self.timeout:g} s); try again")
        try:
            yield
        finally:
            self.lock.release()


@dataclass
class CachedModel:
    package: ModelPackage | BundleModel
    nbytes: int
    stamp: tuple[int, int]  # the weights file's (size, mtime): a replaced file is verified again
    network: Any = None  # a package's loaded network, shared by the warm sessions (set after its first run)


class ModelCache:
    """Verified models by key, least recently used first; ``on_drop(key)`` is told of each model let go."""

    def __init__(self, budget_bytes: int, on_drop: Callable[[ModelKey], None] = lambda key: None) -> None:
        self.budget_bytes, self.on_drop = budget_bytes, on_drop
        self.models: OrderedDict[ModelKey, CachedModel] = OrderedDict()

    def admit(self, package: ModelPackage | BundleModel) -> CachedModel:
        """The cached entry of ``package`` (verifying its weights the first time), made the most recently used; older
        models are dropped while the total passes the budget (the newest is always kept)."""
        key = key_of(package)
        entry = self.models.get(key)
        if entry is None or entry.stamp != stamp_of(package):
            if entry is not None:
                self.on_drop(key)
            package.verify()
            stamp = stamp_of(package)
            entry = CachedModel(package, stamp[0], stamp)
            self.models[key] = entry
        self.models.move_to_end(key)
        while len(self.models) > 1 and sum(m.nbytes for m in self.models.values()) > self.budget_bytes:
            dropped, _ = self.models.popitem(last=False)
            self.on_drop(dropped)
        return entry

    def loaded(self) -> list[str]:
        return [key[0] for key in self.models]
