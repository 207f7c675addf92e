"""The file before SQLite sees it: a file that is not SQLite, or is
truncated, is refused with a message naming the problem, before anything
opens (or writes) it."""

from __future__ import annotations

from pathlib import Path

from taskmap.errors import CheckpointError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
HINT = "the file was left as it is; move it away (or delete it) to start afresh"


def check_file(path: Path) -> None:
    """Catch a file that is not SQLite, or is truncated, before SQLite opens
    it: SQLite itself would only notice when it reads a missing page."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return  # a new store
    except OSError as exc:
        raise CheckpointError(str(path), f"cannot read: {exc}") from exc
    if path.is_dir():
        raise CheckpointError(str(path), "is a directory")
    wal = path.with_name(path.name + "-wal")
    try:
        wal_has_frames = wal.stat().st_size > 0
    except OSError:
        wal_has_frames = False
    if size == 0:
        if wal_has_frames:
            raise CheckpointError(
                str(path), f"truncated: the file is empty but its write-ahead log {wal.name} is not; {HINT}"
            )
        return  # an empty file is an empty database to SQLite: a new store
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise CheckpointError(str(path), f"cannot read: {exc}") from exc
    if not header.startswith(_SQLITE_MAGIC) and not _SQLITE_MAGIC.startswith(header):
        raise CheckpointError(str(path), f"not an SQLite database (it starts with {header[:16]!r}); {HINT}")
    if len(header) < _HEADER_SIZE:
        raise CheckpointError(
            str(path), f"truncated: {size} bytes, shorter than an SQLite header ({_HEADER_SIZE}); {HINT}"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise CheckpointError(str(path), f"damaged header (page size {page_size}); {HINT}")
    if wal_has_frames:
        # a process died with commits still in the log (or in the middle of
        # copying them into the file, which may leave the file short for a
        # moment): SQLite completes that itself, so sizes prove nothing here
        return
    pages = int.from_bytes(header[28:32], "big")
    # the page count in the header is valid when its "valid for" number
    # equals the change counter (SQLite >= 3.7.0 always writes both)
    if header[24:28] == header[92:96] and size < pages * page_size:
        raise CheckpointError(
            str(path),
            f"truncated: its header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes) but the file has {size} bytes; {HINT}",
        )
    if size % page_size:
        raise CheckpointError(
            str(path), f"truncated or damaged: {size} bytes is not a whole number of {page_size}-byte pages; {HINT}"
        )
