"""The value codec: task arguments and results as bytes.

Every encoded value is exactly one msgpack object.

* Fast path: a value that is msgpack-native all the way down -- exact
  ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``, and
  ``list``/``dict`` of those (dict keys of those scalar types) -- is plain
  msgpack, ``use_bin_type=True``: ``5`` is ``b'\\x05'``, ``[1, 'a']`` is
  ``b'\\x92\\x01\\xa1a'``.  The Packer uses ``strict_types=True`` so that
  nothing is converted on the way (a tuple would become a list); anything it
  does not pack itself goes to ``default``, which wraps it as below.  In
  practice that is only an ``int`` beyond 64 bits inside a native list/dict.
* Everything else is ``pickle.dumps(value, protocol=5)`` in a msgpack ext of
  type :data:`EXT_PICKLE` (1).  A list or dict that contains anything
  non-native (a tuple, a set, an ``IntEnum``, a numpy array...) is pickled
  *whole* into one ext rather than packed with one ext per such element:
  measured, that is about twice as fast for small values, ~15x for a list of
  1000 tuples, and decodes as fast or faster.  Also pickled whole: values
  msgpack would pack natively but lossily (``bytearray`` would come back as
  ``bytes``; a ``msgpack.ExtType`` value would be taken for our own ext),
  lists/dicts that are shared or cyclic (pickle keeps the sharing), and
  anything msgpack refuses (nesting deeper than 511, lone surrogates in a
  ``str``...).
* Pickling tries the standard :mod:`pickle` first and falls back to
  :mod:`cloudpickle` (lambdas, closures, classes defined in a function or in
  ``__main__``); cloudpickle output loads with plain :func:`pickle.loads`.
* :data:`NONE_BYTES` (``b'\\xc0'``, msgpack nil) is ``encode(None)``;
  :func:`is_none` lets a caller skip ``None`` without decoding.
* Functions go through :func:`dumps_function` / :func:`loads_function`
  (cloudpickle: by reference when importable, by value otherwise).

``decode(encode(v))`` equals ``v`` and has exactly its type at every level,
including dict key types, container subclasses, NaN floats, big ints and
numpy dtypes and shapes.  Departures, inherent in the formats:

* a ``memoryview`` cannot be pickled: it is encoded as its bytes (C order) and
  decodes as ``bytes``;
* exceptions come back with their class, ``args`` and ``__dict__`` but, as
  with any pickle, without ``__traceback__``, ``__cause__`` and
  ``__context__``; an exception class whose ``__init__`` cannot be called
  with its ``args`` does not decode (:class:`DecodeError`);
* objects compare equal only if their class defines ``__eq__``; a class
  cloudpickle pickles by value is the same class object only in the process
  that defined it (elsewhere it is an equivalent copy);
* numpy's own pickling gives a ``datetime64``/``timedelta64`` array of
  non-native byte order (``'>M8[D]'`` on x86) native byte order; the values
  are kept (numpy issue #5883).  Every other dtype round-trips exactly;
* a pickled value must be under 4 GiB (the msgpack ext limit).

Big values through shared memory (:mod:`taskmap.runtime.shm`): ``encode(value,
shm=writer)`` moves every pickle-protocol-5 out-of-band buffer of at least
``writer.threshold`` bytes (numpy arrays, pandas frames...) and a top-level
``bytes``/``bytearray``/``memoryview`` of that size into a shared memory
segment, copied once straight from the object's memory; the value is then an
ext of type :data:`EXT_SHM` (2) holding ``[in-band pickle, [[segment,
offset, length], ...]]``.  ``decode`` maps the segments and gives pickle
views over them: a numpy array comes back over the shared pages, read-only
(``decode(..., writable=True)``: a private copy-on-write mapping, writable),
while ``bytes``/``bytearray`` are copied out once (they own their memory).
``bytes``/``bytearray`` nested in a container stay in-band (pickle does not
hand them out of band).  Without ``shm`` nothing changes.

Decoding runs :func:`pickle.loads`: decode only data from a trusted peer.

Speed: ``encode`` reuses a msgpack ``Packer`` per thread (2-3x faster than
``msgpack.packb``, which builds one per call); a re-entrant call on the same
thread (a ``__reduce__`` that encodes) takes a fresh one.  Before packing, a
list or dict is checked element by element (~20 ns each, about as much as
packing it), since msgpack would silently turn a nested ``bytearray`` into
``bytes``.  Small values take a few tenths of a microsecond each way.
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgpack

__all__ = [
    "EXT_PICKLE",
    "EXT_SHM",
    "NONE_BYTES",
    "CodecError",
    "DecodeError",
    "FunctionPickler",
    "decode",
    "dumps_function",
    "encode",
    "encode_handed_over",
    "encode_none",
    "is_none",
    "loads_function",
    "segment_names",
]

EXT_PICKLE = 1
"""msgpack ext type code whose payload is a pickle (protocol 5)."""

EXT_SHM = 2
EXT_HANDED_OVER = 3
"""msgpack ext type code of the stand-in for a value that went straight to
the task pinned behind its task (payload: the task's name); it does not decode."""
"""msgpack ext type code whose payload is ``[pickle, handles]``: a pickle
whose out-of-band buffers lie in shared memory segments."""

NONE_BYTES = b"\xc0"
"""``encode(None)``: the msgpack nil byte."""

PICKLE_PROTOCOL = 5

# The per-thread Packer is dropped after packing more than this, so that a
# huge value does not pin a huge buffer for the life of the thread.
_KEEP_PACKER_BELOW = 1 << 20

_MAX_EXT = 0xFFFFFFFF


class CodecError(TypeError):
    """A value could not be encoded, or bytes could not be decoded.

    The underlying error is ``__cause__`` and its text is part of the message.
    """


class DecodeError(CodecError):
    """Bytes could not be decoded: not msgpack, truncated, an unknown ext
    code, or a pickle that does not load here (e.g. a class that does not
    exist in this process; its name is in the message)."""


# -- pickling -------------------------------------------------------------


class _CloudPickler(cloudpickle.Pickler):
    """cloudpickle, plus memoryviews as their bytes (pickle refuses them)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            return bytes, (obj.tobytes(),)
        return super().reducer_override(obj)


def _cloudpickle_dumps(obj: Any, buffer_callback: Callable | None = None) -> bytes:
    with io.BytesIO() as file:
        _CloudPickler(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()


_dumps = pickle.dumps
_loads = pickle.loads


def _pickle(obj: Any, buffer_callback: Callable | None = None) -> bytes:
    """pickle, then cloudpickle; CodecError naming the culprit if both fail."""
    try:
        return _dumps(obj, PICKLE_PROTOCOL, buffer_callback=buffer_callback)
    except Exception:  # noqa: BLE001 - PicklingError, TypeError, AttributeError, a __reduce__'s own error...
        try:
            return _cloudpickle_dumps(obj, buffer_callback)
        except Exception as exc:
            raise _encode_error(obj, exc) from exc


def _exc_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


def _picklable(obj: Any) -> bool:
    try:
        _dumps(obj, PICKLE_PROTOCOL)
    except Exception:  # noqa: BLE001
        try:
            _cloudpickle_dumps(obj)
        except Exception:  # noqa: BLE001
            return False
    return True


def _parts(obj: Any) -> Any:
    """What to look into for the culprit: a container's elements (a dict's
    keys and values), else an instance's ``__dict__`` values."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    try:
        state = vars(obj)
    except TypeError:
        return ()
    return [*state.values()] if isinstance(state, dict) else ()


def _find_culprit(obj: Any, budget: int = 1000) -> Any:
    """Best effort: the innermost unpicklable object inside ``obj`` (which is
    itself unpicklable), looking into containers and instance ``__dict__``s."""
    while True:
        for part in _parts(obj):
            budget -= 1
            if budget < 0:
                return obj
            if part is not obj and not _picklable(part):
                obj = part
                break
        else:
            return obj


def _encode_error(obj: Any, exc: BaseException) -> CodecError:
    culprit = obj
    try:
        culprit = _find_culprit(obj)
    except Exception:  # noqa: BLE001 - the message is best effort
        pass
    where = "" if culprit is obj else f" (inside a value of type {_type_name(obj)!r})"
    return CodecError(f"cannot serialise value of type {_type_name(culprit)!r}{where}: {_exc_text(exc)}")


# -- encoding -------------------------------------------------------------


def _default(obj: Any) -> msgpack.ExtType:
    """msgpack ``default``: anything not exactly msgpack-native becomes a pickle ext."""
    return msgpack.ExtType(EXT_PICKLE, _pickle(obj))


def _encode_whole(value: Any, shm: Any = None) -> bytes:
    """The whole value as one pickle ext (header built by hand: fast)."""
    if shm is not None:
        return _encode_out_of_band(value, shm)
    return _ext(_pickle(value), EXT_PICKLE, value)


def _ext(payload: bytes, code: int, value: Any) -> bytes:
    n = len(payload)
    if n <= 0xFF:
        head = bytes((0xC7, n, code))
    elif n <= 0xFFFF:
        head = b"\xc8" + n.to_bytes(2, "big") + bytes((code,))
    elif n <= _MAX_EXT:
        head = b"\xc9" + n.to_bytes(4, "big") + bytes((code,))
    else:
        raise CodecError(
            f"cannot serialise value of type {_type_name(value)!r}: "
            f"its pickle is {n} bytes, over the 4 GiB msgpack limit"
        )
    return head + payload


class _BufferOf:
    """Pickles a top-level bytes-like value as ``type(data)(<buffer>)`` so
    that its bytes can travel out of band (pickle keeps bytes and bytearray
    in-band)."""

    __slots__ = ("data", "kind")

    def __init__(self, data: Any, kind: type) -> None:
        self.data = data
        self.kind = kind

    def __reduce__(self):
        return self.kind, (pickle.PickleBuffer(self.data),)


_BYTES_LIKE: dict[type, type] = {bytes: bytes, bytearray: bytearray, memoryview: bytes}


def _encode_out_of_band(value: Any, shm: Any) -> bytes:
    """Pickle ``value`` with its big buffers in shared memory (see the module
    docstring); a plain pickle ext when it has none.  If the segment cannot
    be written (``/dev/shm`` full...) the value goes in-band instead."""
    threshold = shm.threshold
    kind = _BYTES_LIKE.get(type(value))
    target = value
    if kind is not None:
        if kind is bytes and type(value) is memoryview and not value.c_contiguous:
            value = value.tobytes()
        if memoryview(value).nbytes >= threshold:
            target = _BufferOf(value, kind)
    buffers: list[memoryview] = []

    def big_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in-band
            return True
        if raw.nbytes < threshold:
            return True
        buffers.append(raw)  # noqa: F821 - bound before the call; deleted only after pickling
        return False

    data = _pickle(target, big_out_of_band)
    if not buffers:
        if target is not value:  # (only when the bytes were under the threshold)
            data = _pickle(value)
        return _ext(data, EXT_PICKLE, value)
    try:
        handles = shm.store(buffers)
    except OSError:
        return _ext(_pickle(value), EXT_PICKLE, value)
    finally:
        del buffers  # no view of the value's memory outlives the encoding
    body = msgpack.packb([data, [list(h) for h in handles]], use_bin_type=True)
    return _ext(body, EXT_SHM, value)


_NONE_TYPE = type(None)
# Exact types msgpack packs natively and gives back unchanged (an int beyond
# 64 bits makes msgpack call ``default``, which pickles it).
_NATIVE = frozenset({_NONE_TYPE, bool, int, float, str, bytes})
# Top-level types handed straight to the Packer (a memoryview packs as bin,
# i.e. decodes as bytes; a msgpack Timestamp packs as ext -1 and comes back).
_PACK_DIRECT = _NATIVE | {memoryview, msgpack.Timestamp}


def _native_tree(value: list | dict) -> bool:
    """Whether a list/dict is msgpack-native all the way down: only exact
    native scalars, lists and dicts with native keys, none of them reached
    twice (shared or cyclic containers are left to pickle, which keeps that)."""
    seen = {id(value)}
    stack: list[Any] = [value]
    while stack:
        c = stack.pop()
        if type(c) is dict:
            if not _NATIVE.issuperset(map(type, c)):
                return False
            c = c.values()
        if _NATIVE.issuperset(map(type, c)):
            continue
        for x in c:
            t = type(x)
            if t is list or t is dict:
                i = id(x)
                if i in seen:
                    return False
                seen.add(i)
                stack.append(x)
            elif t not in _NATIVE:
                return False
    return True


_local = threading.local()
_SHORT = 8
_PACKER_OPTIONS = {"use_bin_type": True, "strict_types": True, "default": _default}


def encode(value: Any, shm: Any = None) -> bytes:
    """Encode ``value`` as bytes (one msgpack object).

    ``decode(encode(v))`` equals ``v`` and has exactly its type, recursively
    (a memoryview decodes as bytes; see the module docstring).  Thread-safe.

    ``shm``: a :class:`taskmap.runtime.shm.SegmentWriter`; buffers of at least its
    ``threshold`` bytes go into shared memory (see the module docstring).

    Raises :class:`CodecError` (a ``TypeError``) if the value cannot be
    serialised even by cloudpickle; the message names the type of the
    offending object and the error is chained as ``__cause__``.
    """
    t = type(value)
    if t is list:
        if len(value) <= _SHORT:  # a Python loop beats map() on a few items
            for x in value:
                tx = type(x)
                if tx not in _NATIVE:
                    if (tx is not list and tx is not dict) or not _native_tree(value):
                        return _encode_whole(value, shm)
                    break
        elif not (_NATIVE.issuperset(map(type, value)) or _native_tree(value)):
            return _encode_whole(value, shm)
    elif t is dict:
        if len(value) <= _SHORT:
            for k, x in value.items():
                tx = type(x)
                if tx not in _NATIVE or type(k) not in _NATIVE:
                    if type(k) not in _NATIVE or (tx is not list and tx is not dict) or not _native_tree(value):
                        return _encode_whole(value, shm)
                    break
        elif not (
            (_NATIVE.issuperset(map(type, value)) and _NATIVE.issuperset(map(type, value.values())))
            or _native_tree(value)
        ):
            return _encode_whole(value, shm)
    elif t not in _PACK_DIRECT:
        return _encode_whole(value, shm)
    elif shm is not None and (t is bytes or t is memoryview) and _nbytes(value) >= shm.threshold:
        return _encode_out_of_band(value, shm)
    # This thread's spare Packers; taking one out makes a re-entrant encode
    # (a __reduce__ that encodes) on this thread build its own.
    try:
        spare = _local.packers
    except AttributeError:
        spare = _local.packers = []
    packer = spare.pop() if spare else msgpack.Packer(**_PACKER_OPTIONS)
    try:
        data = packer.pack(value)  # the Packer resets itself if this raises
    except CodecError:
        spare.append(packer)
        raise  # a nested object that cannot be pickled: whole would fail too
    except Exception:  # noqa: BLE001 - msgpack refused it: too deep, bad str, ...
        spare.append(packer)
        return _encode_whole(value)
    if len(data) < _KEEP_PACKER_BELOW and not spare:
        spare.append(packer)
    return data


def _nbytes(value: Any) -> int:
    # bytes or memoryview: mypy cannot rule out a bytes subclass in the else
    return len(value) if type(value) is bytes else value.nbytes


def encode_list(blobs: list[bytes]) -> bytes:
    """The encoding of the list of the values encoded in ``blobs`` (one
    msgpack array around them, nothing decoded), for the list of an
    expanded task's element results.  A value in shared memory is decoded
    and encoded in-band: the array must not hold handles whose segments
    go with their own task's readers."""
    n = len(blobs)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    parts = [head]
    for blob in blobs:
        if blob and blob[0] in EXT_HEADS and _ext_code(blob) != EXT_PICKLE:
            blob = encode(decode(blob))
        parts.append(bytes(blob))
    return b"".join(parts)


def encode_handed_over(label: str) -> bytes:
    """The stand-in sent for a value handed straight to a pinned child
    (``label`` names its task in the error its decoding raises)."""
    return _ext(label.encode(), EXT_HANDED_OVER, label)


def encode_none() -> bytes:
    """``encode(None)``, i.e. :data:`NONE_BYTES`."""
    return NONE_BYTES


def is_none(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is the encoding of ``None`` (no decoding needed)."""
    return data == NONE_BYTES


# -- decoding -------------------------------------------------------------


def _describe(data: Any) -> str:
    try:
        return f"{len(data)} bytes"
    except Exception:  # noqa: BLE001
        return f"a {_type_name(data)!r}"


def _ext_hook(code: int, data: bytes, writable: bool = False) -> Any:
    if code == EXT_PICKLE:
        try:
            return _loads(data)
        except Exception as exc:
            raise DecodeError(f"cannot unpickle a value ({len(data)} bytes): {_exc_text(exc)}") from exc
    if code == EXT_SHM:
        return _load_out_of_band(data, writable)
    if code == EXT_HANDED_OVER:
        raise DecodeError(
            f"the value of parent task #{data.decode(errors='replace')} was handed straight to "
            "the task run behind it in its worker and kept nowhere else (too big to copy, and "
            "nothing else was to read it)"
        )
    raise DecodeError(
        f"cannot decode msgpack ext type {code}: taskmap only writes types "
        f"{EXT_PICKLE}, {EXT_SHM} and {EXT_HANDED_OVER}"
    )


def _ext_hook_writable(code: int, data: bytes) -> Any:
    return _ext_hook(code, data, True)


def _load_out_of_band(data: bytes, writable: bool) -> Any:
    """Unpickle with the buffers mapped from their shared memory segments."""
    from taskmap.runtime import shm  # (only processes that meet such values need it)

    try:
        pickled, handles = _unpackb(data, raw=False, use_list=True)
        mapped: dict[str, memoryview] = {}
        buffers = []
        for name, offset, length in handles:
            view = mapped.get(name)
            if view is None:
                view = mapped[name] = memoryview(shm.attach(name, writable))
            buffers.append(view[offset : offset + length])
        del mapped
        return _loads(pickled, buffers=buffers)
    except Exception as exc:
        raise DecodeError(f"cannot load a value from shared memory: {_exc_text(exc)}") from exc


def _ext_code(data: bytes | bytearray | memoryview) -> int | None:
    """The ext type code of an encoded value, None if it is not an ext."""
    if not data:
        return None
    first = data[0]
    if 0xD4 <= first <= 0xD8:  # fixext 1..16
        return data[1]
    at = {0xC7: 2, 0xC8: 3, 0xC9: 5}.get(first)
    return data[at] if at is not None and len(data) > at else None


EXT_HEADS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
"""First bytes of an encoded value that is a msgpack ext (a pickle, a
shared memory handle): a caller can skip :func:`segment_names` for others."""
_NO_NAMES: list[str] = []  # (shared: callers only read it)


def segment_names(data: bytes | bytearray | memoryview) -> list[str]:
    """Names of the shared memory segments an encoded value points into
    (empty for a value encoded without them).  Cheap for any other value:
    it looks at the first bytes only."""
    if not data or data[0] not in EXT_HEADS or _ext_code(data) != EXT_SHM:
        return _NO_NAMES
    body = _unpackb(data, raw=False, ext_hook=_raw_ext)
    handles = _unpackb(body.data, raw=False)[1]
    return list(dict.fromkeys(h[0] for h in handles))


def _raw_ext(code: int, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(code, data)


_unpackb = msgpack.unpackb


def decode(data: bytes | bytearray | memoryview, writable: bool = False) -> Any:
    """Decode bytes made by :func:`encode`.

    Values with buffers in shared memory come back over a mapping of their
    segments: read-only by default, private copy-on-write with ``writable``
    (a numpy array is then writable; writes stay in this process).

    Raises :class:`DecodeError` (a :class:`CodecError`) for anything that is
    not a complete, single encoded value, or whose pickle does not load in
    this process (the message includes the pickle error, which names the
    missing module or class); the error is chained as ``__cause__``.
    """
    try:
        hook = _ext_hook_writable if writable else _ext_hook
        return _unpackb(data, raw=False, strict_map_key=False, ext_hook=hook, use_list=True)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode {_describe(data)}: {_exc_text(exc)}") from exc


# -- functions ------------------------------------------------------------


def dumps_function(func: Callable[..., Any]) -> bytes:
    """``cloudpickle.dumps(func, protocol=5)``: by reference when the function
    is importable, by value (code, closure, globals it uses) otherwise.

    Raises :class:`CodecError` naming the function's qualified name and type.
    """
    return FunctionPickler().dumps(func)


class FunctionPickler:
    """:func:`dumps_function` for many functions in a row: one cloudpickle
    pickler and buffer serve them all (a fresh pickler per function costs
    about a third more; a run pickles every distinct function before its
    first task starts).  Each blob stands alone (the memo is cleared between
    functions).  Not thread-safe; make one per batch of functions."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._pickler = cloudpickle.Pickler(self._buffer, protocol=PICKLE_PROTOCOL)

    def dumps(self, func: Callable[..., Any]) -> bytes:
        """The blob of one function; raises :class:`CodecError` naming it."""
        buffer, pickler = self._buffer, self._pickler
        try:
            pickler.dump(func)
            return buffer.getvalue()
        except Exception as exc:
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
            raise CodecError(
                f"cannot serialise function {name!r} of type {_type_name(func)!r}: {_exc_text(exc)}"
            ) from exc
        finally:
            pickler.clear_memo()
            buffer.seek(0)
            buffer.truncate()


def loads_function(data: bytes | bytearray | memoryview) -> Callable[..., Any]:
    """The function :func:`dumps_function` serialised.

    Raises :class:`DecodeError` if it does not load here (the message includes
    the pickle error, which names a missing module or attribute) or is not
    callable.
    """
    try:
        func = _loads(data)
    except Exception as exc:
        raise DecodeError(f"cannot load function from {_describe(data)}: {_exc_text(exc)}") from exc
    if not callable(func):
        raise DecodeError(f"the loaded object, of type {_type_name(func)!r}, is not callable")
    return func


def decode_exception(blob: bytes | None, type_name: str, message: str, traceback_text: str) -> BaseException:
    """An exception raised in another process, rebuilt here.

    ``blob`` is the exception as :func:`encode` wrote it (None when it did not
    survive a round trip there); when it does not decode here either (its
    class does not exist in this process), a
    :class:`taskmap.RemoteTaskError` carries ``type_name``, ``message`` and
    the traceback text instead.  Either way the remote traceback text is the
    exception's ``__cause__`` (a :class:`taskmap.RemoteTraceback`) and its
    ``remote_traceback`` attribute, where the exception allows it.
    """
    from taskmap.errors import RemoteTaskError, RemoteTraceback

    error: BaseException | None = None
    if blob is not None:
        try:
            error = decode(blob)
        except Exception:  # noqa: BLE001 - its class does not exist here
            error = None
        if not isinstance(error, BaseException):
            error = None
    if error is None:
        error = RemoteTaskError(type_name, message, traceback_text)
    error.__cause__ = RemoteTraceback(traceback_text)
    try:
        error.remote_traceback = traceback_text  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return error
