"""Task functions the test files share (module-level, so they reach worker
processes by reference, like a user's module's functions)."""

from __future__ import annotations


def a():
    return 5


def b(x):
    return x + 10


def c(x, y):
    return x + y + 20


def boom(*args):
    raise ValueError("boom")
