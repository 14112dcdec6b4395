"""The one line a failed replica start leaves, and reading it back from a log."""

from __future__ import annotations

from basalt import startfail


def test_the_marker_line_wins_over_later_tracebacks() -> None:
    log = ("INFO loading\nTraceback (most recent call last):\n  File \"x.py\"\n"
           "FileNotFoundError: /models/gone/config.json\n"
           + startfail.marker_line("engine", FileNotFoundError("/models/gone/config.json"))
           + "\nRuntimeError: Event loop is closed\n")
    assert startfail.parse(log) == startfail.StartError(
        "engine", "FileNotFoundError: /models/gone/config.json")


def test_without_a_marker_the_last_exception_line_then_the_last_line() -> None:
    assert startfail.parse("a\nKeyError: 'x'\nshutting down\n") == startfail.StartError(
        "", "KeyError: 'x'")
    assert startfail.parse("a\nkilled\n") == startfail.StartError("", "killed")
    assert startfail.parse("\n \n") is None


def test_long_and_multi_line_messages_become_one_short_line() -> None:
    line = startfail.marker_line("settings", ValueError("bad\nvalue " + "x" * 1000))
    assert "\n" not in line and len(line) < 400
    assert startfail.describe(RuntimeError()) == "RuntimeError"
