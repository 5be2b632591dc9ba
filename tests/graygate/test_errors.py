"""``one_line``: the one summary of an exception for a log line or an error message."""

from __future__ import annotations

from graygate.errors import one_line


class _Wrapped(Exception):
    """An exception that carries the driver's own as ``orig``, as SQLAlchemy's do."""

    def __init__(self, text: str, orig: BaseException | None) -> None:
        super().__init__(text)
        self.orig = orig


def test_the_drivers_message_is_preferred_to_the_wrappers() -> None:
    exc = _Wrapped("(wrapper) something\n[SQL: SELECT 1]", ConnectionRefusedError("refused"))
    assert one_line(exc) == "refused"
    assert one_line(_Wrapped("wrapper text\nmore", None)) == "wrapper text"


def test_first_line_only_and_cut_at_the_limit() -> None:
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(ValueError("x" * 200)) == "x" * 200
    assert one_line(ValueError("x" * 201)) == "x" * 200
    assert one_line(ValueError("abcdef"), limit=3) == "abc"


def test_without_a_message_the_fallback() -> None:
    assert one_line(TimeoutError()) == "TimeoutError()"
    assert one_line(TimeoutError(), fallback="TimeoutError") == "TimeoutError"
    # The fallback is for no message only.
    assert one_line(TimeoutError("late"), fallback="TimeoutError") == "late"
