"""Fingerprints of task functions: a short hash that changes when what a
function computes may have changed, and stays the same across processes,
runs and ``PYTHONHASHSEED`` values when it has not.

The checkpoint store (:mod:`taskmap.checkpoint`) keeps a task's result only
while its fingerprint is unchanged.  Like ``joblib.Memory``, which hashes a
function's source, the rule looks at the function itself, not at the world it
reads.  What goes into the fingerprint of a task function:

* a plain function, coroutine function or lambda: its code object -- the
  bytecode, the constants (nested code objects, i.e. inner functions and
  comprehensions, recursively), the global and attribute names it uses, its
  variable names, argument counts, flags and exception table -- but not its
  name, file or line numbers (moving it in its file changes nothing) and not
  its docstring; its default and keyword-default values; the values in its
  closure cells; and the code, defaults and closures of the functions defined
  in the same module that it refers to by global name (the helpers it calls,
  also under a ``functools.wraps``-style decorator such as ``lru_cache``),
  transitively;
* a ``functools.partial``: the wrapped callable's fingerprint, its positional
  arguments and its keywords;
* a bound method: its function's fingerprint and the state of the object it
  is bound to (a ``staticmethod``/``classmethod`` object: its function's);
* a class (called to build a value): its module, qualified name, and the
  functions and plain class attributes defined in its body and in the bodies
  of its base classes (``object`` and builtins left out);
* any other callable object: its class's fingerprint as above plus the
  object's state;
* a builtin or C-extension function (``len``, ``math.sqrt``): its module and
  qualified name (an upgrade of the library that provides it does not count
  as a change).

Bytecode differs between Python versions: under another Python version every
task counts as changed.  Classes are named with their module, so an object of
a class defined in a script counts as changed between ``python script.py``
(module ``__main__``) and importing the script.

Values (defaults, closure contents, partial arguments, object state) are
hashed through a canonical serialisation: ``None``, bools, numbers, strings,
bytes, tuples, lists and dicts exactly, in order; sets and frozensets sorted
(their iteration order depends on the process's hash seed); functions by
their fingerprint; classes and modules by name; any other object through its
``__reduce_ex__`` (what pickle would store), walked the same way.  An object
that cannot be reduced is hashed by its type and ``repr`` with memory
addresses removed; if that ``repr`` holds something else that varies between
processes, the task simply reruns every time (never the other way round).

Not part of the fingerprint, so a change there does not rerun the task
(:func:`taskmap.reset_tasks` does): global variables the function reads,
functions and classes it imports from other modules, files and services it
reads, and the code of classes it instantiates inside its body.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["DIGEST_SIZE", "Fingerprinter", "fingerprint", "task_fingerprint", "task_fingerprints"]

DIGEST_SIZE = 16
"""Bytes of every digest (blake2b): 128 bits, collisions out of reach."""

# memory addresses in reprs ("<Foo object at 0x7f...>") differ between processes
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")

_FUNCTION_TYPES = (types.FunctionType,)
_BUILTIN_TYPES = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)
# plain class attributes worth hashing (settings like ``threshold = 5``)
_PLAIN = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def fingerprint(func: Callable[..., Any]) -> str:
    """The fingerprint of ``func`` as 32 hex digits (see the module docstring
    for what it covers).  Equal in every process for an unchanged function."""
    return Fingerprinter().digest(func).hex()


def task_fingerprint(function_digest: bytes, parent_keys: Iterable[bytes]) -> bytes:
    """The fingerprint of one task: its function's digest and the names of its
    dependencies in argument order, so that a task whose dependency list
    changed counts as changed.  ``parent_keys`` are the names encoded as
    msgpack objects (:func:`taskmap.checkpoint.encode_key`), which carry their
    own lengths, so plain concatenation is unambiguous."""
    return hashlib.blake2b(function_digest + b"".join(parent_keys), digest_size=DIGEST_SIZE).digest()


def task_fingerprints(
    function_digests: Mapping[Any, bytes], keys: Mapping[Any, bytes], dependencies: Mapping[Any, Iterable]
) -> dict:
    """``task_fingerprint`` of every task of ``dependencies`` at once (task ->
    digest), in one pass: a graph is fingerprinted before each run, and this
    is about twice as fast as a call per task."""
    blake2b = hashlib.blake2b
    return {
        task: blake2b(function_digests[task] + b"".join([keys[p] for p in parents]), digest_size=DIGEST_SIZE).digest()
        for task, parents in dependencies.items()
    }


# what opens a container's bytes, by its exact type
_OPENS: dict[type, bytes] = {tuple: b"(", list: b"[", dict: b"{", set: b"<", frozenset: b">"}


class Fingerprinter:
    """Computes fingerprints, each distinct callable once.

    The cache holds a reference to every callable it saw, so that an id is not
    reused by another object while the cache lives; make one per run.  Not
    thread-safe (one thread at a time).
    """

    __slots__ = ("_active", "_digests", "_own")

    def __init__(self) -> None:
        self._digests: dict[int, tuple[object, bytes]] = {}
        self._own: dict[int, tuple[object, bytes]] = {}
        # callables being hashed right now: a closure that contains itself
        # (a recursive inner function) is hashed as a marker the second time
        self._active: set[int] = set()

    def digest(self, func: Any) -> bytes:
        """The fingerprint of a callable, as DIGEST_SIZE bytes."""
        key = id(func)
        hit = self._digests.get(key)
        if hit is not None and hit[0] is func:
            return hit[1]
        if key in self._active:
            return _marker(b"cycle", func)
        self._active.add(key)
        try:
            h = hashlib.blake2b(digest_size=DIGEST_SIZE)
            self._callable(func, h)
            value = h.digest()
        finally:
            self._active.discard(key)
        self._digests[key] = (func, value)
        return value

    # -- callables ---------------------------------------------------------

    def _callable(self, func: Any, h) -> None:
        if isinstance(func, _FUNCTION_TYPES):
            h.update(b"F")
            h.update(self._own_digest(func))
            # the helpers it calls, sorted so the order of discovery (which
            # depends on where a cycle is entered) does not matter
            helpers = sorted(
                (g.__qualname__.encode("utf-8", "surrogatepass"), self._own_digest(g))
                for g in _same_module_helpers(func)
            )
            for name, own in helpers:
                h.update(name + b"\0" + own)
        elif isinstance(func, (staticmethod, classmethod)):
            h.update(b"S" if isinstance(func, staticmethod) else b"K")
            h.update(self.digest(func.__func__))
        elif isinstance(func, functools.partial):
            h.update(b"P")
            h.update(self.digest(func.func))
            self._value(func.args, h)
            self._value(func.keywords, h)
        elif isinstance(func, types.MethodType):
            h.update(b"M")
            h.update(self.digest(func.__func__))
            self._value(func.__self__, h)
        elif isinstance(func, _BUILTIN_TYPES):
            h.update(b"B")
            h.update(_qualified_name(func).encode("utf-8", "surrogatepass"))
            owner = getattr(func, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                self._value(owner, h)  # e.g. the list of ``some_list.append``
        elif isinstance(func, type):
            h.update(b"C")
            self._class(func, h)
        else:
            h.update(b"O")
            self._class(type(func), h)
            self._value(func, h)

    def _own_digest(self, func: types.FunctionType) -> bytes:
        """A function's code, defaults and closure, without its helpers."""
        key = id(func)
        hit = self._own.get(key)
        if hit is not None and hit[0] is func:
            return hit[1]
        h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        code = func.__code__
        doc = func.__doc__
        skip_first = bool(code.co_consts) and isinstance(doc, str) and code.co_consts[0] is doc
        self._code(code, h, skip_first)
        self._value(func.__defaults__, h)
        self._value(func.__kwdefaults__, h)
        for cell in func.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                h.update(b"e")
            else:
                self._value(content, h)
        value = h.digest()
        self._own[key] = (func, value)
        return value

    def _code(self, code: types.CodeType, h, skip_first_const: bool = False) -> None:
        h.update(b"K")
        for number in (
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags,
        ):
            h.update(number.to_bytes(8, "little", signed=True))
        _feed(h, code.co_code)
        _feed(h, code.co_exceptiontable)
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            _feed(h, "\0".join(names).encode("utf-8", "surrogatepass"))
        consts = code.co_consts[1:] if skip_first_const else code.co_consts
        h.update(len(consts).to_bytes(8, "little"))
        for const in consts:
            if isinstance(const, types.CodeType):
                self._code(const, h)
            else:
                self._value(const, h)

    def _class(self, cls: type, h) -> None:
        for klass in cls.__mro__:
            if klass is object or klass.__module__ == "builtins":
                continue
            h.update(_qualified_name(klass).encode("utf-8", "surrogatepass") + b"\0")
            for name, attr in sorted(vars(klass).items()):
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if isinstance(attr, property):
                    h.update(b"p" + name.encode("utf-8", "surrogatepass"))
                    for part in (attr.fget, attr.fset, attr.fdel):
                        h.update(self.digest(part) if part is not None else b"-")
                elif isinstance(attr, _FUNCTION_TYPES):
                    h.update(b"f" + name.encode("utf-8", "surrogatepass"))
                    h.update(self.digest(attr))
                elif isinstance(attr, _PLAIN) and not (name.startswith("__") and name.endswith("__")):
                    h.update(b"a" + name.encode("utf-8", "surrogatepass"))
                    self._value(attr, h)

    # -- values ------------------------------------------------------------

    def _value(self, value: Any, h, active: set | None = None) -> None:
        """Feed a canonical serialisation of ``value`` to ``h``."""
        t = type(value)
        if value is None:
            h.update(b"N")
        elif t is bool:
            h.update(b"T" if value else b"F")
        elif t is int:
            h.update(b"i" + str(value).encode() + b";")
        elif t is float:
            h.update(b"f" + struct.pack("<d", value))
        elif t is complex:
            h.update(b"j" + struct.pack("<dd", value.real, value.imag))
        elif t is str:
            _feed(h, value.encode("utf-8", "surrogatepass"), b"s")
        elif t is bytes:
            _feed(h, value, b"b")
        elif t is tuple or t is list or t is dict or t is set or t is frozenset:
            self._container(value, h, active)
        elif isinstance(value, (types.FunctionType, functools.partial, types.MethodType, *_BUILTIN_TYPES)):
            h.update(b"c" + self.digest(value))
        elif isinstance(value, type):
            h.update(b"t" + _qualified_name(value).encode("utf-8", "surrogatepass") + b";")
        elif isinstance(value, types.ModuleType):
            h.update(b"m" + value.__name__.encode("utf-8", "surrogatepass") + b";")
        elif isinstance(value, types.CodeType):
            self._code(value, h)
        else:
            self._object(value, h, active)

    def _container(self, value, h, active: set | None) -> None:
        active = set() if active is None else active
        key = id(value)
        if key in active:  # a list that contains itself
            h.update(b"@")
            return
        active.add(key)
        try:
            t = type(value)
            h.update(_OPENS[t])
            h.update(len(value).to_bytes(8, "little"))
            if t is dict:
                for k, v in value.items():
                    self._value(k, h, active)
                    self._value(v, h, active)
            elif t is set or t is frozenset:
                for part in sorted(self._sub_digest(v, active) for v in value):
                    h.update(part)
            else:
                for v in value:
                    self._value(v, h, active)
        finally:
            active.discard(key)

    def _sub_digest(self, value, active: set) -> bytes:
        sub = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self._value(value, sub, active)
        return sub.digest()

    def _object(self, value, h, active: set | None) -> None:
        """Any other object: what pickle would store, walked canonically."""
        active = set() if active is None else active
        key = id(value)
        if key in active:
            h.update(b"@")
            return
        active.add(key)
        try:
            try:
                reduced = value.__reduce_ex__(4)
            except Exception:  # noqa: BLE001 - not picklable: fall back to repr
                reduced = None
            if isinstance(reduced, tuple) and reduced:
                h.update(b"R")
                # (callable, args, state, list items, dict items, setter);
                # the iterators of items are consumed into tuples
                parts = list(reduced[:3]) + [tuple(part) if part is not None else None for part in reduced[3:5]]
                for part in parts:
                    self._value(part, h, active)
            else:
                h.update(b"r" + _qualified_name(type(value)).encode("utf-8", "surrogatepass") + b";")
                try:
                    text = repr(value)
                except Exception:  # noqa: BLE001
                    text = ""
                _feed(h, _ADDRESS.sub("0x", text).encode("utf-8", "surrogatepass"))
        finally:
            active.discard(key)


# -- helpers ---------------------------------------------------------------------


def _feed(h, data: bytes, tag: bytes = b"") -> None:
    h.update(tag + len(data).to_bytes(8, "little"))
    h.update(data)


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}"


def _marker(kind: bytes, func: Any) -> bytes:
    return hashlib.blake2b(
        kind + _qualified_name(func).encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE
    ).digest()


def _global_names(code: types.CodeType) -> set[str]:
    """Every name a code object (and the code nested in it) looks up."""
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def _unwrap(obj: Any) -> Any:
    """The function under decorators that keep it as ``__wrapped__``
    (``functools.wraps``, ``functools.lru_cache``...)."""
    for _ in range(16):  # (a bound: ``__wrapped__`` chains can loop)
        inner = getattr(obj, "__wrapped__", None) if not isinstance(obj, types.ModuleType) else None
        if inner is None:
            return obj
        obj = inner
    return obj


def _same_module_helpers(func: types.FunctionType) -> list[types.FunctionType]:
    """The functions defined in ``func``'s module that it refers to by
    global name, and those they refer to, transitively (``func`` excluded)."""
    module = func.__module__
    helpers: list[types.FunctionType] = []
    stack = [func]
    seen = {id(func)}
    while stack:
        f = stack.pop()
        space = f.__globals__
        for name in _global_names(f.__code__):
            g = _unwrap(space.get(name))
            if isinstance(g, types.FunctionType) and g.__module__ == module and id(g) not in seen:
                seen.add(id(g))
                helpers.append(g)
                stack.append(g)
    return helpers
