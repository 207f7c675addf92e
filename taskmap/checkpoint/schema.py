"""The store's table layout and row format: the schema, the columns and the
INSERT that rows go in with, the key a task name is stored under, and the
checksum every row carries."""

from __future__ import annotations

import functools
import io
import zlib
from typing import Any

from taskmap.observe.observers import DONE, FAILED

SCHEMA_VERSION = 1
NOT_STORED = "not_stored"
_STATUSES = (DONE, FAILED, NOT_STORED)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tasks (
        key         BLOB NOT NULL UNIQUE,
        fingerprint BLOB NOT NULL,
        status      TEXT NOT NULL,
        payload     BLOB,
        checksum    INTEGER NOT NULL,
        error       TEXT,
        finished    REAL NOT NULL,
        attempts    INTEGER NOT NULL,
        output      TEXT
    )""",
)
COLUMNS = ("key", "fingerprint", "status", "payload", "checksum", "error", "finished", "attempts", "output")
# columns added to the schema since version 1, nullable, with their types: a
# store that lacks one gets it added when a run takes the store (reading it
# needs none of them), so the schema version stays 1 and older stores open
ADDED_COLUMNS = {"output": "TEXT"}  # a failed task's output tail (taskmap.observe.output)
_ROW_PLACES = f"({', '.join('?' * len(COLUMNS))})"
CHUNK_SIZES = (256, 64, 16, 4, 1)  # rows per INSERT statement, largest first


@functools.lru_cache(maxsize=512)
def insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` rows (a task's new outcome replaces its old one)."""
    return f"INSERT OR REPLACE INTO tasks ({', '.join(COLUMNS)}) VALUES " + ", ".join([_ROW_PLACES] * rows)


def encode_key(task: Any) -> bytes:
    """The bytes a task name is stored under.

    msgpack for ``str``/``int``/``bytes``/``float``/``bool``/``None`` (the
    codec's own encoding); anything else is pickled without the memo (so
    ``('a', 'a')`` gives the same bytes whether or not its two strings are one
    object) inside the codec's pickle extension, so :func:`taskmap.runtime.codec.decode`
    reads every key back.
    """
    import pickle

    import msgpack

    from taskmap.runtime import codec

    if type(task) in NATIVE_KEYS:
        return codec.encode(task)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=codec.PICKLE_PROTOCOL)
    pickler.fast = True  # no memo: equal names, equal bytes
    pickler.dump(task)
    return msgpack.packb(msgpack.ExtType(codec.EXT_PICKLE, buffer.getvalue()))


NATIVE_KEYS = frozenset({str, int, bytes, float, bool, type(None)})


def row_checksum(key: bytes, fingerprint: bytes, status: str, payload: bytes | None) -> int:
    """CRC-32 of a row's key, fingerprint, status and payload: a bit flipped
    in any of them (or a row moved to another key) is noticed at restore."""
    crc = zlib.crc32(key + fingerprint + _STATUS_BYTES.get(status, b"?"))
    return crc if payload is None else zlib.crc32(payload, crc)


_STATUS_BYTES = {s: s.encode("ascii") for s in _STATUSES}
