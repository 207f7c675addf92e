"""The value codec: exact round trips (value and type at every level),
failures that name what failed, and the function helpers."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import fractions
import math
import pathlib
import pickle
import struct
import sys
import threading
import types
import uuid

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from taskmap.runtime import codec
from taskmap.runtime.codec import CodecError, DecodeError, decode, encode

# -- the comparison helper ----------------------------------------------------


def _float_same(a: float, b: float) -> None:
    if math.isnan(a):
        assert math.isnan(b), (a, b)
    else:
        assert a == b, (a, b)
        assert math.copysign(1.0, a) == math.copysign(1.0, b), (a, b)  # -0.0


def _array_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dtype.hasobject:
        for x, y in zip(a.ravel(), b.ravel()):
            assert_same(x, y)
        return
    if a.dtype.kind in "fc":
        assert np.array_equal(a, b, equal_nan=True)
    elif a.dtype.kind in "mM":
        assert np.array_equal(np.isnat(a), np.isnat(b))
        assert np.array_equal(a[~np.isnat(a)], b[~np.isnat(b)])
    else:
        assert np.array_equal(a, b)
    # and bit for bit (NaN payloads, -0.0, padding-free dtypes)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def assert_same(a, b) -> None:
    """``b`` equals ``a`` and has exactly its type, recursively."""
    assert type(a) is type(b), (type(a), type(b), a, b)
    if isinstance(a, np.ndarray):
        _array_same(a, b)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype
        _array_same(np.asarray(a), np.asarray(b))
    elif isinstance(a, BaseException):
        assert_same(a.args, b.args)
        assert_same(vars(a), vars(b))
    elif isinstance(a, float):
        _float_same(a, b)
    elif isinstance(a, complex):
        _float_same(a.real, b.real)
        _float_same(a.imag, b.imag)
    elif isinstance(a, dict):
        assert len(a) == len(b)
        # pairwise, in order: keeps key types and copes with NaN values
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert_same(ka, kb)
            assert_same(va, vb)
        if isinstance(a, collections.defaultdict):
            assert a.default_factory is b.default_factory or (type(a.default_factory) is type(b.default_factory))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_same(x, y)
        if hasattr(a, "_fields"):  # namedtuple
            assert a._fields == b._fields
    elif isinstance(a, (set, frozenset)):
        assert a == b
        stored = {y: y for y in b}  # b's own element equal to each x
        for x in a:
            assert_same(x, stored[x])
    else:
        assert a == b, (a, b)
        if hasattr(a, "__dict__") and not isinstance(a, type):
            assert_same(vars(a), vars(b))


def roundtrip(value):
    data = encode(value)
    assert type(data) is bytes
    back = decode(data)
    assert_same(value, back)
    # decode also takes a memoryview (a slice of a larger message)
    assert_same(value, decode(memoryview(b"xx" + data)[2:]))
    return back


# -- module-level types (importable, so pickled by reference) -----------------


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


class Mode(enum.Enum):
    A = "a"
    B = ("b", 2)


class Flags(enum.IntFlag):
    R = 4
    W = 2


class Name(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Blob(bytes):
    pass


class Items(list):
    pass


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return type(other) is type(self) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def __eq__(self, other):
        return type(other) is type(self) and (self.a, self.b) == (other.a, other.b)


Pair = collections.namedtuple("Pair", "left right")


class MyError(ValueError):
    pass


class ErrorWithState(Exception):
    def __init__(self, message, code=0):
        super().__init__(message, code)
        self.code = code


class BadReduce:
    def __reduce__(self):
        raise ValueError("BadReduce refuses to be pickled")


class Reentrant:
    """Encodes something while being pickled: exercises the per-thread Packer."""

    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        inner = encode([1, "two", {"three": 3.0}])
        assert decode(inner) == [1, "two", {"three": 3.0}]
        return (Reentrant, (self.x,))

    def __eq__(self, other):
        return type(other) is type(self) and self.x == other.x


def module_function(x):
    return x * 2


# -- the fast path and its format -----------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        5,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        "",
        "abc",
        "é€😀",
        b"",
        b"\x00\xff",
        [],
        [1, "a", 2.5, None],
        {},
        {"a": 1},
        {1: "x", b"k": [2], 2.5: None, None: True, False: 0},
        [[[1]], {"x": {"y": [b"z"]}}],
    ],
)
def test_native_values_are_plain_msgpack(value):
    data = encode(value)
    assert data == msgpack.packb(value, use_bin_type=True)
    roundtrip(value)


def test_none_constant():
    assert codec.NONE_BYTES == b"\xc0" == encode(None) == codec.encode_none()
    assert codec.is_none(encode(None))
    assert codec.is_none(memoryview(b"\xc0"))
    for other in (0, False, "", b"", [], (None,), [None]):
        assert not codec.is_none(encode(other))
    assert decode(codec.NONE_BYTES) is None


def test_non_native_values_are_one_pickle_ext():
    data = encode((1, 2))
    value = msgpack.unpackb(data, ext_hook=lambda code, payload: (code, payload))
    code, payload = value
    assert code == codec.EXT_PICKLE
    assert pickle.loads(payload) == (1, 2)


# -- explicit round trips ------------------------------------------------------


def _local_class_instance():
    class Local:
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            return type(other) is type(self) and other.v == self.v

    return Local(3)


ROUNDTRIPS = {
    "tuple": (1, "a", (2.5, None), ()),
    "tuple in list": [1, (2, 3), [(4,)]],
    "list of tuples": [(i, str(i)) for i in range(100)],
    "set": {1, "a", (2, 3), b"x", frozenset({4})},
    "frozenset": frozenset({1, 2.5, "x"}),
    "empty set": set(),
    "dict int keys": {1: "a", -5: "b", 2**40: "c"},
    "dict tuple keys": {(1, 2): "a", (3,): "b", (): "c"},
    "dict bytes keys": {b"a": 1, b"": 2},
    "dict float keys": {1.5: "a", -0.0: "b", float("inf"): "c"},
    "dict mixed keys": {"s": 1, 2: 2, (3, 4): 3, b"5": 4, 6.5: 5, None: 6, True: 7, frozenset({8}): 8},
    "dict with tuple value": {"a": (1, 2)},
    "OrderedDict": collections.OrderedDict([("b", 1), ("a", (2,))]),
    "defaultdict": collections.defaultdict(list, {"a": [1], "b": []}),
    "Counter": collections.Counter("abracadabra"),
    "deque": collections.deque([1, (2,), "3"]),
    "namedtuple": Pair(1, (2, 3)),
    "bools": [True, False, {True: False}, (True,)],
    "bool vs int keys": {0: "zero", True: "one", 2: "two"},
    "IntEnum": Color.GREEN,
    "IntEnum in list": [Color.RED, 1, Color.GREEN],
    "IntEnum keys": {Color.RED: 1, 2: 2},
    "Enum": [Mode.A, Mode.B],
    "IntFlag": Flags.R | Flags.W,
    "str subclass": Name("alice"),
    "str subclass in dict": {"n": Name("bob"), Name("k"): 1},
    "int subclass": Count(7),
    "float subclass": Ratio(0.25),
    "bytes subclass": Blob(b"ab"),
    "list subclass": Items([1, (2,)]),
    "big int": 2**64,
    "big negative int": -(2**63) - 1,
    "huge int": 3**500,
    "big ints nested": [2**64, {"k": -(2**100)}, (2**70,)],
    "nan": float("nan"),
    "nan nested": [float("nan"), {"x": float("nan")}, (float("nan"),)],
    "inf": [float("inf"), float("-inf"), -0.0],
    "complex": [1 + 2j, complex(float("nan"), -0.0)],
    "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
    "datetime tz": datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "date": datetime.date(1999, 12, 31),
    "time": datetime.time(23, 59, 1, 5),
    "timedelta": datetime.timedelta(days=-3, seconds=5, microseconds=7),
    "Decimal": [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("1e-30")],
    "Fraction": fractions.Fraction(22, 7),
    "UUID": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "Path": pathlib.Path("/tmp/a/b.txt"),
    "PurePosixPath": pathlib.PurePosixPath("x/y"),
    "PureWindowsPath": pathlib.PureWindowsPath(r"C:\x\y"),
    "bytearray": bytearray(b"\x00abc"),
    "bytearray in list": [b"bytes", bytearray(b"ba")],
    "bytearray in dict": {"a": bytearray(), "b": b""},
    "ExtType value": msgpack.ExtType(5, b"not ours"),
    "ExtType in list": [msgpack.ExtType(1, b"not a pickle")],
    "ExtType key": {msgpack.ExtType(1, b"k"): 1},
    "Timestamp": msgpack.Timestamp(5, 6),
    "lone surrogate": "a\ud800b",
    "lone surrogate nested": ["\udfff", {"k": "\ud800"}],
    "range": range(2, 10, 3),
    "slice": slice(1, None, 2),
    "type": int,
    "user class": Point(1, (2, 3)),
    "user class in list": [Point(1, 2), {"p": Point("a", None)}],
    "slotted class": Slotted(1, [2]),
    "numpy int array": np.arange(12, dtype=np.int32).reshape(3, 4),
    "numpy float array nan": np.array([1.0, np.nan, -0.0, np.inf]),
    "numpy big-endian": np.arange(5, dtype=">i8"),
    "numpy fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "numpy view": np.arange(20)[::3],
    "numpy 0-d": np.array(3.5),
    "numpy empty": np.zeros((0, 3), dtype=np.uint8),
    "numpy bool": np.array([True, False]),
    "numpy complex": np.array([1 + 1j, np.nan], dtype=np.complex64),
    "numpy str": np.array(["a", "bcd"]),
    "numpy bytes": np.array([b"a", b"bc"]),
    "numpy datetime": np.array(["2020-01-01", "NaT"], dtype="datetime64[ns]"),
    "numpy timedelta": np.array([1, 2], dtype="timedelta64[s]"),
    "numpy structured": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
    "numpy object": np.array([1, "x", (2, 3), None], dtype=object),
    "numpy in dict": {"x": np.ones(3), "n": 1},
    "numpy scalars": [
        np.int64(5),
        np.float32(1.5),
        np.float64(np.nan),
        np.bool_(True),
        np.uint8(255),
        np.complex128(1j),
        np.str_("s"),
        np.datetime64("2020-01-01"),
    ],
    "numpy float64 key": {np.float64(1.5): 1},
    "exception": ValueError("bad", 3),
    "exception subclass": MyError("mine"),
    "exception with state": ErrorWithState("msg", code=4),
    "exception no args": KeyError(),
    "exceptions nested": [RuntimeError("a"), (TypeError("b"),)],
    "local class": _local_class_instance(),
}
_deep: object = "leaf"
for _ in range(50):
    _deep = (_deep, [1])
ROUNDTRIPS["deep tuple nesting"] = _deep


@pytest.mark.parametrize("name", list(ROUNDTRIPS))
def test_roundtrip(name):
    roundtrip(ROUNDTRIPS[name])


def test_exception_class_and_args():
    back = roundtrip(ErrorWithState("boom", code=9))
    assert type(back) is ErrorWithState and back.args == ("boom", 9) and back.code == 9
    try:
        raise MyError("with traceback")
    except MyError as error:
        back = decode(encode(error))
    assert type(back) is MyError and back.args == ("with traceback",)


def test_deep_list_nesting_beyond_msgpack_limit():
    value: list = [1]
    for _ in range(800):  # msgpack refuses > 511 levels: pickled whole
        value = [value, "x"]
    back = decode(encode(value))
    depth = 0
    while isinstance(back, list) and len(back) == 2:
        assert back[1] == "x"
        back = back[0]
        depth += 1
    assert depth == 800 and back == [1]


def test_cycles_and_sharing_are_kept():
    cyclic: list = [1]
    cyclic.append(cyclic)
    back = decode(encode(cyclic))
    assert back[0] == 1 and back[1] is back

    inner = [1, 2]
    shared = {"a": inner, "b": inner}
    back = decode(encode(shared))
    assert back == shared and back["a"] is back["b"]

    d: dict = {}
    d["self"] = d
    back = decode(encode(d))
    assert back["self"] is back


def test_memoryview_decodes_as_bytes():
    assert_same(decode(encode(memoryview(b"abc"))), b"abc")
    assert_same(decode(encode([memoryview(b"ab"), 1])), [b"ab", 1])
    assert_same(decode(encode((memoryview(b"xy"),))), (b"xy",))
    strided = memoryview(np.arange(6, dtype=np.uint8))[::2]  # not contiguous
    assert_same(decode(encode(strided)), bytes([0, 2, 4]))


def test_lambda_and_closure_values_use_cloudpickle():
    factor = 3
    value = {"f": lambda x: x * factor, "g": (module_function,)}
    back = decode(encode(value))
    assert back["f"](2) == 6
    assert back["g"][0] is module_function


def test_local_class_keeps_identity_in_this_process():
    value = _local_class_instance()
    back = decode(encode([value]))[0]
    assert type(back) is type(value) and back == value


def test_reentrant_encode_on_the_same_thread():
    value = [Reentrant(1), "tail", {"k": [Reentrant(2)]}]
    roundtrip(value)
    roundtrip([1, 2, "after"])


def test_encode_recovers_after_a_failure():
    with pytest.raises(CodecError):
        encode([1, (x for x in [])])
    assert encode([1, 2]) == b"\x92\x01\x02"
    roundtrip({"a": [1, 2, (3,)]})


def test_thread_safety():
    values = [[i, str(i), {"k": i * 1.5}, [b"x" * (i % 7)]] for i in range(300)]
    values += [(i, {i}) for i in range(50)]
    errors = []

    def work():
        try:
            for _ in range(20):
                for v in values:
                    assert decode(encode(v)) == v
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# -- hypothesis -------------------------------------------------------------------

_ints = st.one_of(st.integers(), st.integers(min_value=-(2**200), max_value=2**200))
_hashable_leaves = st.one_of(
    st.none(), st.booleans(), _ints, st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8)
)
_hashables = st.recursive(
    _hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
    ),
    max_leaves=6,
)
_keys = st.one_of(
    st.text(max_size=8),
    _ints,
    st.lists(st.integers(), max_size=3).map(tuple),
    st.binary(max_size=8),
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.binary(max_size=4).map(bytearray),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.sets(_hashables, max_size=5),
        st.frozensets(_hashables, max_size=5),
        st.dictionaries(_keys, children, max_size=5),
        st.dictionaries(st.text(max_size=5), children, max_size=5),  # stays msgpack-native more often
    ),
    max_leaves=25,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_property_roundtrip(value):
    roundtrip(value)


_native = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=6),
        st.binary(max_size=6),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**63), st.binary(max_size=4)), children, max_size=4
        ),
    ),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(_native)
def test_property_native_values_stay_msgpack(value):
    data = encode(value)
    assert data == msgpack.packb(value, use_bin_type=True)
    assert_same(value, decode(data))


_dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness="<"),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
).filter(lambda d: d.kind not in "mM" or d.isnative)  # see test_numpy_non_native_datetime


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(dtype=_dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
def test_property_numpy_arrays(array):
    roundtrip(array)
    roundtrip({"array": array, "n": 1})
    if array.ndim == 0:
        roundtrip(array[()])  # a numpy scalar


def test_numpy_non_native_datetime():
    """A known numpy pickle quirk (numpy#5883): a datetime64/timedelta64 array
    of non-native byte order comes back with native byte order; the values
    are kept.  Every other dtype keeps its byte order exactly."""
    for dtype in (">M8[D]", ">m8[s]") if sys.byteorder == "little" else ("<M8[D]", "<m8[s]"):
        array = np.array([1, 300], dtype=dtype)
        back = decode(encode(array))
        assert back.dtype == array.dtype.newbyteorder("=")
        assert np.array_equal(back, array)


# -- failures ------------------------------------------------------------------------


def _generator():
    yield 1


@pytest.mark.parametrize(
    "value, type_name",
    [
        (_generator(), "generator"),
        ([1, _generator()], "generator"),
        ({"k": (1, _generator())}, "generator"),
        (threading.Lock(), "lock"),
        ((1, [threading.Lock()]), "lock"),
        (BadReduce(), "BadReduce"),
        ([BadReduce()], "BadReduce"),
        (Point(1, threading.Lock()), "lock"),
    ],
)
def test_unserialisable_value(value, type_name):
    with pytest.raises(CodecError) as info:
        encode(value)
    error = info.value
    assert isinstance(error, TypeError)
    assert not isinstance(error, DecodeError)
    assert type_name in str(error)
    assert "cannot serialise value of type" in str(error)
    assert error.__cause__ is not None


def test_bad_reduce_cause_is_its_error():
    with pytest.raises(CodecError) as info:
        encode(BadReduce())
    assert isinstance(info.value.__cause__, ValueError)
    assert "refuses" in str(info.value)


def _ext(payload: bytes, code: int = codec.EXT_PICKLE) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, payload))


def test_decode_missing_module():
    data = _ext(b"ctaskmap_no_such_module\nGhost\n.")
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert "taskmap_no_such_module" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_decode_missing_class():
    data = _ext(b"ctaskmap.runtime.codec\nNoSuchClass\n)\x81.")
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert "NoSuchClass" in str(info.value)
    assert info.value.__cause__ is not None


def test_decode_class_gone_from_this_process():
    module = types.ModuleType("taskmap_test_vanishing_module")
    exec("class Vanishing:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        data = encode([module.Vanishing(), 1])
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert "taskmap_test_vanishing_module" in str(info.value)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"\x01\x02",
        b"\xdd\xff\xff\xff\xff",
        b"\xa3ab",
        b"\xa2\xff\xfe",
        b"\x81\x91\x01\x02",  # a list as a map key
        _ext(b"not a pickle"),
        _ext(b""),
        _ext(b"\x80\x05K\x01", code=42),
        _ext(b"x", code=0),
    ],
)
def test_decode_garbage(garbage):
    with pytest.raises(CodecError) as info:
        decode(garbage)
    assert isinstance(info.value, DecodeError)
    assert str(info.value)


def test_decode_wrong_input_type():
    with pytest.raises(CodecError):
        decode(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_property_decode_random_bytes_never_crashes(data):
    try:
        decode(data)
    except CodecError:
        pass


# -- functions ----------------------------------------------------------------------


def test_function_lambda():
    f = codec.loads_function(codec.dumps_function(lambda x, y=2: x + y))
    assert f(1) == 3


def test_function_closure():
    def make_adder(n):
        def add(x):
            return x + n

        return add

    add = codec.loads_function(codec.dumps_function(make_adder(5)))
    assert add(1) == 6


def test_function_in_module_is_by_reference():
    data = codec.dumps_function(module_function)
    assert codec.loads_function(data) is module_function
    assert codec.loads_function(memoryview(data)) is module_function


def test_function_closing_over_a_lock():
    lock = threading.Lock()

    def locked():
        with lock:
            return 1

    with pytest.raises(CodecError) as info:
        codec.dumps_function(locked)
    message = str(info.value)
    assert "locked" in message and "function" in message
    assert info.value.__cause__ is not None


def test_function_pickler_blobs_stand_alone():
    # one pickler for a run's functions: each blob loads on its own (the memo
    # does not leak from one function into the next), also after a failure
    lock = threading.Lock()
    shared = {"n": 3}

    def make(k):
        def f(x):
            return x + k + shared["n"]

        return f

    def locked():
        with lock:
            return 1

    pickler = codec.FunctionPickler()
    first = pickler.dumps(make(1))
    with pytest.raises(CodecError, match="locked"):
        pickler.dumps(locked)
    second = pickler.dumps(make(10))
    by_ref = pickler.dumps(module_function)
    assert codec.loads_function(second)(1) == 14
    assert codec.loads_function(first)(1) == 5
    assert codec.loads_function(by_ref) is module_function
    # the same bytes a fresh pickler writes
    assert by_ref == codec.dumps_function(module_function)
    assert len(second) == len(codec.dumps_function(make(10)))


def test_loads_function_failures():
    with pytest.raises(CodecError) as info:
        codec.loads_function(b"ctaskmap_no_such_module\nfunc\n.")
    assert "taskmap_no_such_module" in str(info.value)
    assert info.value.__cause__ is not None
    with pytest.raises(CodecError):
        codec.loads_function(b"garbage")
    with pytest.raises(CodecError, match="not callable"):
        codec.loads_function(pickle.dumps(5))


def test_float_bits_kept():
    for x in (0.1, -0.0, 5e-324, float("inf"), 1.7976931348623157e308):
        assert struct.pack("<d", decode(encode(x))) == struct.pack("<d", x)
        assert struct.pack("<d", decode(encode((x,)))[0]) == struct.pack("<d", x)
