"""taskmap.runtime.capture: lines cut per task, the bounded text, the stream
stand-ins and the log handler, without any runner."""

from __future__ import annotations

import contextlib
import io
import logging
import sys

import pytest

from taskmap.runtime import capture
from taskmap.runtime.capture import LINE_MAX, LOG, STDERR, STDOUT, KeptText, OwnedStream, Sink


class Recorder(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple] = []

    def lines(self, key, stream, text):
        self.got.append((key, stream, text))


def test_only_complete_lines_are_passed_on_and_the_last_is_completed_at_the_end():
    sink = Recorder()
    sink.write("a", STDOUT, "one ")
    sink.write("a", STDOUT, "two")
    sink.write("b", STDOUT, "other\n")
    assert sink.got == [("b", STDOUT, "other\n")]
    sink.write("a", STDERR, "err")
    sink.write("a", STDOUT, "\nthree\nfour")
    assert sink.got[1:] == [("a", STDOUT, "one two\nthree\n")]
    sink.finish("a")
    assert sink.got[2:] == [("a", STDOUT, "four\n"), ("a", STDERR, "err\n")]
    assert sink.open == {}
    sink.finish("b")  # (wrote whole lines only: nothing left)
    assert len(sink.got) == 4


def test_a_line_longer_than_line_max_is_passed_on_in_pieces():
    sink = Recorder()
    sink.write("a", STDOUT, "x" * (2 * LINE_MAX))  # one long write: at once
    assert [len(t) for _, _, t in sink.got] == [2 * LINE_MAX]
    for _ in range(100):  # many small ones: once they hold more than LINE_MAX
        sink.write("a", STDOUT, "y" * 1000)
    assert [len(t) for _, _, t in sink.got] == [2 * LINE_MAX, 66_000]
    sink.finish("a")
    assert "".join(t for _, _, t in sink.got) == "x" * (2 * LINE_MAX) + "y" * 100_000 + "\n"


def test_kept_text_is_whole_below_the_cap():
    kept = KeptText()
    for k in range(1000):
        kept.add(f"line {k}\n")
    assert kept.text() == "".join(f"line {k}\n" for k in range(1000))


def test_kept_text_keeps_head_and_tail_and_says_how_much_was_cut():
    kept = KeptText()
    total = 0
    chunk = "".join(f"{k:09d}\n" for k in range(10_000))  # 100,000 characters
    for _ in range(30):
        kept.add(chunk)
        total += len(chunk)
    text = kept.text()
    assert len(text) <= KeptText.CAP
    assert text.startswith(chunk[:1000])
    assert text.endswith(chunk[-1000:])
    head, marker, tail = text.partition("[taskmap: ")
    cut = int(marker and tail.split(" ", 1)[0])
    # (the head is cut mid-line here: the line saying so starts on a line of its own)
    assert head == "".join(chunk * 6)[: KeptText.HEAD] + "\n"
    assert KeptText.HEAD + cut + len(tail.split("\n", 1)[1]) == total
    assert "characters of output cut here]" in text


def test_a_stand_in_passes_writes_through_when_no_task_owns_the_context():
    inner = io.StringIO()
    stream = OwnedStream(inner, STDOUT)
    print("plain", file=stream)
    assert inner.getvalue() == "plain\n"
    sink = Recorder()
    token = capture.owner.set((sink, 7))
    try:
        print("owned", file=stream)
        with pytest.raises(TypeError):
            stream.write(b"bytes")  # type: ignore[arg-type]
    finally:
        capture.owner.reset(token)
    assert inner.getvalue() == "plain\n"
    assert sink.got == [(7, STDOUT, "owned\n")]
    assert stream.writable() and not stream.readable()
    assert stream.encoding == "utf-8"
    assert stream.getvalue() == "plain\n"  # (anything else is the wrapped stream's)


def test_install_wraps_the_streams_once_and_the_last_uninstall_puts_them_back():
    before_out, before_err = sys.stdout, sys.stderr
    capture.install(logging.INFO)
    capture.install(logging.DEBUG)
    try:
        assert isinstance(sys.stdout, OwnedStream) and sys.stdout.inner is before_out
        assert isinstance(sys.stderr, OwnedStream) and sys.stderr.inner is before_err
        assert capture.original(STDOUT) is before_out
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, capture.OutputLogHandler)]
        assert len(handlers) == 1 and handlers[0].level == logging.DEBUG
        capture.uninstall(logging.DEBUG)
        assert handlers[0].level == logging.INFO
    finally:
        capture.uninstall(logging.INFO)
    assert sys.stdout is before_out and sys.stderr is before_err
    assert not [h for h in logging.getLogger().handlers if isinstance(h, capture.OutputLogHandler)]


@contextlib.contextmanager
def owned_by_task():
    """The capture installed, a sink owning the context; yields the sink.
    (In the test's body: pytest puts its own sys.stderr back between a
    fixture and the test.)"""
    sink = Recorder()
    capture.install(logging.INFO, {"mygraph-manager"})
    token = capture.owner.set((sink, "t"))
    try:
        yield sink
    finally:
        capture.owner.reset(token)
        capture.uninstall(logging.INFO, {"mygraph-manager"})


def test_a_record_its_logger_emits_is_kept_and_the_users_handler_still_gets_it():
    logger = logging.getLogger("test_capture.emits")
    logger.setLevel(logging.INFO)
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    logger.addHandler(handler)
    try:
        with owned_by_task() as sink:
            logger.info("hello %s", "there")
            logger.debug("below the logger's level: never emitted")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert seen.getvalue() == "hello there\n"
    assert sink.got == [("t", LOG, "INFO:test_capture.emits:hello there\n")]
    assert logger.level == logging.NOTSET


def test_capture_never_lowers_a_loggers_level():
    logger = logging.getLogger("test_capture.quiet")
    logger.setLevel(logging.WARNING)
    try:
        with owned_by_task() as sink:
            logger.info("not emitted")
    finally:
        logger.setLevel(logging.NOTSET)
    assert sink.got == []


def test_records_of_taskmaps_own_loggers_are_not_task_output():
    logger = logging.getLogger("mygraph-manager")
    logger.setLevel(logging.INFO)
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        with owned_by_task() as sink:
            logger.info("pid 1: starting task t")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert sink.got == []


def test_a_record_a_handler_wrote_through_a_captured_stream_is_kept_once():
    logger = logging.getLogger("test_capture.stream_handler")
    logger.setLevel(logging.INFO)
    try:
        with owned_by_task() as sink:
            handler = logging.StreamHandler(sys.stderr)  # (the stand-in, as a task's basicConfig makes it)
            logger.addHandler(handler)
            logger.info("once")
            logger.removeHandler(handler)
    finally:
        logger.setLevel(logging.NOTSET)
    assert sink.got == [("t", STDERR, "once\n")]


def test_with_no_handler_at_all_a_warning_goes_to_stderr_as_logging_would_print_it():
    root = logging.getLogger()
    saved = list(root.handlers)
    for h in saved:
        root.removeHandler(h)
    try:
        with owned_by_task() as sink:
            logging.getLogger("test_capture.last_resort").warning("careful")
    finally:
        for h in saved:
            root.addHandler(h)
    # logging's last resort writes the message to sys.stderr: the task's stderr
    assert sink.got == [("t", STDERR, "careful\n")]


def test_tail_lines_is_the_end_of_a_text():
    text = "".join(f"line {k}\n" for k in range(100))
    assert capture.tail_lines(text, lines=3) == "line 97\nline 98\nline 99"
    assert len(capture.tail_lines("x" * 10_000, chars=100)) == 100
