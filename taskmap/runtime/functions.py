"""Task functions on their way to the workers, as users write them.

Users make one function object per task: ``functools.partial(load, path)``
for each file, a closure from a factory for each request.  Pickling each of
them whole with cloudpickle, every run, and measuring each object's tasks
apart, made such a graph several times slower than the same graph sharing one
function.  So a task's function is split into

- its *code*: the function a partial wraps, or a closure's function without
  its cell values.  A function importable by name (a module-level function of
  a module other than ``__main__``) travels as its name, ``module:qualname``:
  nothing to pickle, and the worker keeps what it resolved across runs (again
  after its module is reloaded, see :mod:`taskmap.runtime.process_setup`).  Any other
  code is pickled by cloudpickle once per run, however many tasks share it;
- its *data*: the partial's arguments and keywords, the closure's cell
  values and defaults, encoded by :mod:`taskmap.runtime.codec` (msgpack for plain
  values), a few microseconds a task.

Data the codec cannot encode, a partial of a partial's subclass, a closure
with an empty cell or attributes of its own: the function is pickled whole, as
before.  ``code_of[i]`` numbers each task's code, so whatever is measured per
function (how deep to queue its tasks at a worker) is measured per code, not
per object.

An entry on the wire (``SUBMIT``'s function table, ``{fid: entry}``)::

    bytes                                   the function, pickled whole
    [REF, name]                             a function importable by name
    [PARTIAL, code, args, keywords]         functools.partial(code, *args, **keywords)
                                            (keywords None: none)
    [CLOSURE, code, cells, defaults, kwdefaults]   code's function with these cells
                                            (defaults, kwdefaults None: none)

where ``code`` is a name (``module:qualname``) or the number of a blob in the
message's ``codes`` (``{number: cloudpickle bytes}``, once per run and worker).
"""

from __future__ import annotations

import functools
import hashlib
import operator
import sys
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from taskmap.runtime import codec

try:  # whether cloudpickle would pickle a function by reference (honours
    # cloudpickle.register_pickle_by_value)
    from cloudpickle.cloudpickle import _should_pickle_by_reference
except ImportError:  # pragma: no cover - another cloudpickle: by name when importable

    def _should_pickle_by_reference(obj: Any, name: str | None = None) -> bool:
        return True


REF, PARTIAL, CLOSURE = 0, 1, 2


class UnsendableFunction(Exception):
    """Task ``index``'s function cannot be pickled (the cause says why)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Shipment(NamedTuple):
    """A run's functions ready to send: ``func_of[i]`` the entry of task i,
    ``code_of[i]`` the number of its code, ``entries`` {fid: entry} and
    ``codes`` {code number: blob} of the code pickled by value."""

    func_of: list[int]
    code_of: list[int]
    entries: dict[int, Any]
    codes: dict[int, bytes]
    # fid -> the code numbers (pickled by value) its entry needs
    needs: dict[int, tuple[int, ...]]
    # code number -> a digest of its blob: a worker keeps code it was sent
    # under its digest across runs, so the same pickle travels once
    digests: dict[int, bytes]


def by_name(func: Any) -> str | None:
    """``module:qualname`` when ``func`` is importable by that name from a
    module other than ``__main__`` (and not registered with cloudpickle to
    travel by value), else None."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module in ("__main__", "__mp_main__") or "<" in qualname:
        return None
    if not isinstance(func, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None
    try:
        if not _should_pickle_by_reference(func):
            return None
    except TypeError:  # (builtins: cloudpickle asks their module too)
        pass
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"{module}:{qualname}" if obj is func else None


class _Codes:
    """Numbers the distinct code of a run's functions; pickles by value only
    what has no name, once."""

    def __init__(self) -> None:
        self.pickler = codec.FunctionPickler()
        self.numbers: dict[Any, int] = {}  # name or id(function) -> number
        self.known: dict[int, tuple[int, Any]] = {}  # id(function) -> what of() said
        self.keep: list[Any] = []  # (the functions behind id() keys stay alive)
        self.blobs: dict[int, bytes] = {}

    def number(self, key: Any) -> int:
        n = self.numbers.get(key)
        if n is None:
            n = self.numbers[key] = len(self.numbers)
        return n

    def of(self, func: Any) -> tuple[int, Any]:
        """(code number, what the entry names: a name or that number)."""
        known = self.known.get(id(func))
        if known is None:
            known = self.known[id(func)] = self._of(func)
            self.keep.append(func)
        return known

    def _of(self, func: Any) -> tuple[int, Any]:
        name = by_name(func)
        if name is not None:
            return self.number(name), name
        key = ("id", id(func))
        n = self.numbers.get(key)
        if n is None:
            n = self.number(key)
            self.blobs[n] = _pickled_by_value(func, self.pickler)
        return n, n


# Functions pickled by value (defined in __main__, closures' templates,
# lambdas) are pickled again every run, because cloudpickle captures the
# globals they read, and a global may have changed since.  A pickle is
# reused only while everything it captured is provably the same: the
# function's code, defaults and cells, and every global its code names,
# each a module, a class, a function (by name, or itself checked the same
# way) or an immutable value equal to before.  A list, dict or other object
# that could have changed inside makes the function uncachable.
_BY_VALUE: dict[int, tuple[Any, Any, bytes]] = {}  # id(func) -> (weakref, fingerprint, blob)
_BY_VALUE_MAX = 4096
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range)


def _pickled_by_value(func: Any, pickler: codec.FunctionPickler) -> bytes:
    fingerprint = _fingerprint(func, 3)
    if fingerprint is not None:
        cached = _BY_VALUE.get(id(func))
        if cached is not None and cached[0]() is func and cached[1] == fingerprint:
            return cached[2]
    blob = pickler.dumps(func)
    if fingerprint is not None:
        key = id(func)

        def forget(ref: Any, key: int = key) -> None:
            # the function is gone: its id may name another one next
            entry = _BY_VALUE.get(key)
            if entry is not None and entry[0] is ref:
                del _BY_VALUE[key]

        try:
            ref = weakref.ref(func, forget)
        except TypeError:
            return blob
        if len(_BY_VALUE) >= _BY_VALUE_MAX:
            _BY_VALUE.clear()
        _BY_VALUE[key] = (ref, fingerprint, blob)
    return blob


def _fingerprint(func: Any, depth: int) -> tuple[Any, ...] | None:
    """What a by-value pickle of ``func`` captured, as a comparable value;
    None when something in it could change unseen (see above)."""
    if type(func) is not types.FunctionType or depth == 0 or func.__dict__:
        return None
    parts: list[Any] = [func.__code__, func.__name__, func.__qualname__, func.__module__]
    for group in (func.__defaults__ or (), tuple((func.__kwdefaults__ or {}).values())):
        for value in group:
            part = _stable(value, depth)
            if part is None:
                return None
            parts.append(part)
    for cell in func.__closure__ or ():
        try:
            part = _stable(cell.cell_contents, depth)
        except ValueError:  # an empty cell
            part = ("empty",)
        if part is None:
            return None
        parts.append(part)
    found = func.__globals__
    for name in _global_names(func.__code__):
        if name in found:
            part = _stable(found[name], depth)
            if part is None:
                return None
            parts.append((name, part))
        else:
            parts.append((name, "missing"))
    return tuple(parts)


def _stable(value: Any, depth: int) -> Any:
    """A comparable stand-in for a captured value, or None if it may change
    without its identity changing."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return (kind, value)
    if kind is tuple or kind is frozenset:
        items = [_stable(v, depth) for v in value]
        return None if any(i is None for i in items) else (kind, tuple(items))
    if isinstance(value, (types.ModuleType, type, types.BuiltinFunctionType)):
        return ("id", id(value))
    if kind is types.FunctionType:
        if by_name(value) is not None:
            return ("id", id(value))
        inner = _fingerprint(value, depth - 1)
        return None if inner is None else ("id", id(value), inner)
    return None


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _closure_template_key(func: types.FunctionType) -> Any:
    return ("closure", func.__code__, id(func.__globals__), func.__qualname__, func.__module__)


def ship(funcs: Sequence[Callable[..., Any] | None]) -> Shipment:
    """Split each task's function (``None``: a task not to run) into code
    and data.  Raises :class:`UnsendableFunction` for a function that cannot
    be pickled at all (the caller names the task)."""
    codes = _Codes()
    func_of = [0] * len(funcs)
    code_of = [0] * len(funcs)
    entries: dict[int, list[Any]] = {}
    needs: dict[int, tuple[int, ...]] = {}
    code_by_fid: list[int] = []
    fids: dict[int, int] = {}  # id(function object) -> fid (the graph keeps them alive)
    # a partial of the same function over the very same argument objects as
    # the one before it (a storm of `partial(fetch, url)`): the same entry,
    # split once and built once by a worker (only the one before is looked
    # at: a miss costs a few identity tests)
    before_func: Any = None
    before_args: Any = None
    before_fid = -1  # (-1 also when the partial before had keywords)
    templates: dict[Any, tuple[int, Any]] = {}
    partial = functools.partial
    for i, func in enumerate(funcs):
        if func is None:
            continue
        fid = fids.get(id(func))
        if fid is None:
            part = func if type(func) is partial else None
            if part is not None:
                args = part.args
                # (== first: C-level, and it fails at once on other arguments;
                # then the same objects, since 1 == 1.0 and the codec keeps types)
                if args == before_args and part.func is before_func and not part.keywords and before_fid >= 0:
                    if all(map(operator.is_, args, before_args)):
                        fid = before_fid
            if fid is None:
                fid = len(code_by_fid)
                try:
                    entry, number = _split(func, codes, templates)
                except Exception as error:
                    raise UnsendableFunction(i) from error
                entries[fid] = entry
                code_by_fid.append(number)
                if type(entry[1]) is int:
                    needs[fid] = (entry[1],)
            if part is not None:
                before_func, before_args = part.func, part.args
                before_fid = -1 if part.keywords else fid
            fids[id(func)] = fid
        func_of[i] = fid
        code_of[i] = code_by_fid[fid]
    digests = {n: _digest(blob) for n, blob in codes.blobs.items()}
    return Shipment(func_of, code_of, entries, codes.blobs, needs, digests)


class Shipper:
    """Functions shipped while a run goes (``taskmap.load``: each arrival
    brings a new instance's functions): :attr:`shipment` grows as
    :meth:`fid` meets functions, and an entry equal to one already shipped
    (the same function, a partial of it with equal arguments, a closure of
    the same code with equal cells) gets that entry's number, so code is
    pickled once per distinct function, not once per instance.  An entry
    with data of its own (a partial over the instance's number, say) is one
    more entry per instance: small, but it stays for the run."""

    ID_CACHE = 4096  # function objects remembered by identity, at most

    def __init__(self) -> None:
        self.codes = _Codes()
        self.templates: dict[Any, tuple[int, Any]] = {}
        self.shipment = Shipment([], [], {}, self.codes.blobs, {}, {})
        self.by_entry: dict[Any, int] = {}  # an entry as a hashable key -> fid
        self.code_by_fid: list[int] = []
        # id(function) -> (function, fid, code): the function kept alive while its id is a key
        self.by_id: dict[int, tuple[Any, int, int]] = {}

    def fid(self, func: Callable[..., Any]) -> tuple[int, int]:
        """(fid, code number) of ``func``, shipped if new; raises what
        :func:`ship` raises for a function that cannot be pickled (as
        ``error.__cause__``, with index 0)."""
        known = self.by_id.get(id(func))
        if known is not None and known[0] is func:
            return known[1], known[2]
        try:
            entry, number = _split(func, self.codes, self.templates)
        except Exception as error:
            raise UnsendableFunction(0) from error
        key = tuple(entry)
        fid = self.by_entry.get(key)
        if fid is None:
            fid = self.by_entry[key] = len(self.code_by_fid)
            self.code_by_fid.append(number)
            self.shipment.entries[fid] = entry
            if type(entry[1]) is int:
                self.shipment.needs[fid] = (entry[1],)
                digests = self.shipment.digests
                if entry[1] not in digests:
                    digests[entry[1]] = _digest(self.codes.blobs[entry[1]])
        if len(self.by_id) >= self.ID_CACHE:
            self.by_id.clear()
        self.by_id[id(func)] = (func, fid, number)
        return fid, number


def _digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _split(func: Any, codes: _Codes, templates: dict[Any, tuple[int, Any]]) -> tuple[list[Any], int]:
    """(entry, code number) of one function object."""
    if type(func) is functools.partial and not func.__dict__:
        try:
            args = codec.encode(list(func.args))
            keywords = codec.encode(dict(func.keywords)) if func.keywords else None
        except Exception:  # noqa: BLE001 - data the codec cannot carry: whole
            pass
        else:
            number, code = codes.of(func.func)
            return [PARTIAL, code, args, keywords], number
    if (
        type(func) is types.FunctionType
        and not func.__dict__
        # a closure, or a function with no name to import it by (a lambda, a
        # def inside a function): its code pickled once for all such functions
        # of that code (a lambda per task in a script pickled each: 49 us)
        and (func.__closure__ or "<" in func.__qualname__)
    ):
        split = _split_closure(func, codes, templates)
        if split is not None:
            return split
    number, code = codes.of(func)
    return [REF, code], number


def _split_closure(
    func: types.FunctionType, codes: _Codes, templates: dict[Any, tuple[int, Any]]
) -> tuple[list[Any], int] | None:
    try:
        cells = [cell.cell_contents for cell in func.__closure__ or ()]
    except ValueError:  # an empty cell
        return None
    try:
        data = codec.encode(cells)
        # (most closures have no defaults: None, not an encoded None, saves
        # two encodes a task here and two decodes at the worker)
        defaults = codec.encode(list(func.__defaults__)) if func.__defaults__ else None
        kwdefaults = codec.encode(func.__kwdefaults__) if func.__kwdefaults__ else None
    except Exception:  # noqa: BLE001 - data the codec cannot carry: whole
        return None
    key = ("closure", func.__code__, id(func.__globals__), func.__qualname__, func.__module__)
    template = templates.get(key)
    if template is None:
        # the first closure of this code stands for it (its cells are replaced)
        template = templates[key] = codes.of(func)
    number, code = template
    return [CLOSURE, code, data, defaults, kwdefaults], number


# -- the worker's side -------------------------------------------------------


class FunctionTable:
    """A worker's functions: code resolved by name is kept across runs (and
    resolved again after any module reload here: ``epoch``), code pickled by
    value for one run."""

    def __init__(self) -> None:
        self.named: dict[str, tuple[int, Any]] = {}  # name -> (epoch, function)
        self.blobs: dict[int, bytes] = {}  # this run's code numbers -> digests
        # digest -> [blob, function or None, epoch it was loaded in]; kept
        # across runs until the coordinator says to drop it (it keeps count)
        self.by_digest: dict[bytes, list[Any]] = {}

    def new_run(self) -> None:
        self.blobs = {}

    def add_codes(self, codes: dict[int, list[Any]], drop: Sequence[bytes] = ()) -> None:
        """This run's code: ``{number: [digest, blob or None]}`` (None: sent
        in an earlier run, kept here); ``drop``: digests to forget."""
        for digest in drop:
            self.by_digest.pop(digest, None)
        for number, (digest, blob) in codes.items():
            self.blobs[number] = digest
            if blob is not None:
                self.by_digest[digest] = [blob, None, -1]  # (loaded when first needed)

    def build(self, entry: list[Any], epoch: int) -> Callable[..., Any]:
        """The function of one entry; raises if it cannot be had here."""
        kind, code = entry[0], entry[1]
        func: Callable[..., Any] = self._code(code, epoch)
        if kind == REF:
            return func
        if kind == PARTIAL:
            if entry[3] is None:
                return functools.partial(func, *codec.decode(entry[2]))
            return functools.partial(func, *codec.decode(entry[2]), **codec.decode(entry[3]))
        cells = codec.decode(entry[2])
        defaults = codec.decode(entry[3]) if entry[3] is not None else None
        made = types.FunctionType(
            func.__code__,
            func.__globals__,
            func.__name__,
            tuple(defaults) if defaults else None,
            tuple(types.CellType(v) for v in cells),
        )
        made.__kwdefaults__ = codec.decode(entry[4]) if entry[4] is not None else None
        made.__qualname__ = func.__qualname__
        made.__module__ = func.__module__
        made.__doc__ = func.__doc__
        return made

    def _code(self, code: Any, epoch: int) -> Any:
        if type(code) is int:
            held = self.by_digest[self.blobs[code]]
            if held[2] != epoch:
                # (loaded again after a module reload here: what it captured
                # by name must be looked up again)
                held[1] = codec.loads_function(held[0])
                held[2] = epoch
            return held[1]
        known = self.named.get(code)
        if known is not None and known[0] == epoch:
            return known[1]
        func = resolve(code)
        self.named[code] = (epoch, func)
        return func


def resolve(name: str) -> Any:
    """The object ``module:qualname`` names, importing the module."""
    import importlib

    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
