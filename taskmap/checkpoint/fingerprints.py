"""Fingerprints of one graph's tasks: the key and fingerprint of each task,
which the restore compares the rows with and the recorder writes into them."""

from __future__ import annotations

import logging
import os
from typing import Any

from taskmap.checkpoint.log import log
from taskmap.checkpoint.schema import NATIVE_KEYS, encode_key
from taskmap.expand import Element


class TaskFingerprints:
    """Keys and fingerprints of a graph's tasks, all made when this is made:
    before the run, so a closure the running tasks mutate cannot change a
    digest midway (or make it raise), and in one tight pass, which costs about
    a microsecond per task, less than making each as its task finishes.
    """

    __slots__ = ("_combine", "_function_of", "_keys", "_pack", "entries", "graph")

    def __init__(self, graph: Any) -> None:
        import msgpack

        from taskmap.checkpoint.fingerprint import DIGEST_SIZE, Fingerprinter, task_fingerprint, task_fingerprints

        # the codec's options: for a native scalar these bytes are the codec's
        self._pack = msgpack.Packer(use_bin_type=True, strict_types=True).pack
        self._combine = task_fingerprint
        self.graph = graph
        deps, funcs = graph.dependencies, graph.funcs
        hasher = Fingerprinter()
        by_id: dict[int, bytes] = {}
        function_of: dict = {}
        for task in deps:
            func = funcs[task]
            digest = by_id.get(id(func))
            if digest is None:
                try:
                    digest = hasher.digest(func)
                except Exception as exc:  # noqa: BLE001 - never stop a run over this
                    # a digest that matches nothing: the task reruns every time
                    digest = os.urandom(DIGEST_SIZE)
                    log(
                        graph.name,
                        logging.WARNING,
                        "checkpoint: cannot fingerprint the function of task %r (%s: %s); it will rerun every time",
                        task,
                        type(exc).__name__,
                        exc,
                    )
                by_id[id(func)] = digest
            function_of[task] = digest
        self._function_of = function_of
        self._keys: dict = {}
        pack, key = self._pack, self.key
        keys = self._keys
        for task in deps:
            k = None
            if type(task) is str:  # the common case inline
                try:
                    k = pack(task)
                except Exception:  # noqa: BLE001 - a lone surrogate: the codec's way
                    pass
            keys[task] = k if k is not None else key(task)
        fingerprints = task_fingerprints(function_of, keys, deps)
        # task -> (key, fingerprint)
        self.entries: dict = {task: (keys[task], fingerprints[task]) for task in deps}

    def key(self, task: Any) -> bytes:
        """``encode_key(task)``, cached."""
        k = self._keys.get(task)
        if k is None:
            k = None
            if type(task) in NATIVE_KEYS:
                try:
                    # what codec.encode gives a native scalar, 4x faster
                    k = self._pack(task)
                except Exception:  # noqa: BLE001 - a huge int, a lone surrogate: the codec's way
                    k = None
            if k is None:
                k = encode_key(task)
            self._keys[task] = k
        return k

    def entry(self, task: Any) -> tuple[bytes, bytes]:
        """``(key, fingerprint)`` of a task (one added to the graph since)."""
        found = self.entries.get(task)
        if found is None:
            # an element (taskmap.expand.Element) is fingerprinted as its task:
            # the same function over the same dependencies
            of = task.task if type(task) is Element else task
            parent_keys = [self.key(p) for p in self.graph.dependencies[of]]
            found = self.entries[task] = (self.key(task), self._combine(self._function_of.get(of, b""), parent_keys))
        return found
