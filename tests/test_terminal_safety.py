"""Strings from traffic in the terminal report (issue 10, item 12): no markup, no escape
sequences. Rendered by a real rich Console into a buffer."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table
from rich.text import Text

from graygate.terminal_safety import escape_control, escape_terminal, safe_text

HOSTILE = [
    "GET /zz/[/oops]",
    "GET /[link=https://evil.example]click[/link]",
    "GET /[bold red]x[/]",
    "GET /a\x1b]0;owned\x07b",  # OSC: retitle the terminal
    "GET /a\x1b[2J\x1b[Hb",  # CSI: clear the screen
    "GET /a\x9b31mb",  # 8-bit CSI (C1)
    "GET /a\u202eb",  # right-to-left override
    "GET /x\\",  # a trailing backslash
    "GET /x\\[bold]y",
    "line\nbreak\ttab\rcr\x00nul\x7fdel",
]


def _render(*renderables: object) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system="truecolor", force_terminal=True)
    console.print(*renderables)
    return buf.getvalue()


def _plain(*renderables: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(*renderables)
    return buf.getvalue()


def test_unescaped_strings_break_the_report() -> None:
    # What the report did: markup read from traffic. The escaped tests below prove the fix.
    with pytest.raises(MarkupError):
        _render("GET /zz/[/oops]")
    assert "\x1b]8;" in _render("GET /[link=https://evil.example]click[/link]")  # a link


@pytest.mark.parametrize("value", HOSTILE)
def test_escape_terminal_prints_exactly_the_visible_text(value: str) -> None:
    out = _render(escape_terminal(value))
    assert "\x1b]" not in out  # no OSC (title, link) of any kind
    assert "\x9b" not in out and "\x07" not in out and "\u202e" not in out
    # Plain rendering shows exactly the visible form, brackets and backslashes included
    # (rich.markup.escape doubles a trailing backslash, so that it cannot escape a tag
    # that follows when strings are joined).
    expected = escape_control(value)
    if expected.endswith("\\"):
        expected += "\\"
    assert _plain(escape_terminal(value)) == expected + "\n"


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_text_in_tables_and_assembled_text(value: str) -> None:
    table = Table()
    table.add_column("endpoint")
    table.add_column("detail")
    table.add_row(safe_text(value, style="red"), escape_terminal(value))
    out = _render(table, Text.assemble("run ", safe_text(value, "bold")))
    for bad in ("\x1b]", "\x9b", "\x07", "\u202e", "\x00"):
        assert bad not in out
    plain = _plain(table, Text.assemble("run ", safe_text(value)))
    assert plain.count(escape_control(value)) >= 2  # the cell and the assembled text


def test_escape_control_forms() -> None:
    assert escape_control("a\x1b[31mb") == "a\\x1b[31mb"
    assert escape_control("\t\n\r") == "\\t\\n\\r"
    assert escape_control("\x85\x9b\x7f") == "\\x85\\x9b\\x7f"
    assert escape_control("\u202e\u2066\u2028") == "\\u202e\\u2066\\u2028"
    assert escape_control("ünïcødé → ok 日本") == "ünïcødé → ok 日本"  # printable is kept
    assert escape_terminal(42) == "42"
    assert escape_terminal("[b]") == "\\[b]"


def test_the_terminal_report_prints_traffic_as_text() -> None:
    """The report's renderer escapes what came from traffic: a path that is rich markup, a
    link tag and an escape sequence print as characters, and nothing crashes."""
    import io

    from rich.console import Console
    from rich.table import Table

    from graygate.report_terminal import _add_row

    table = Table()
    for name in ("endpoint", "field"):
        table.add_column(name)
    _add_row(table, "GET /zz/[/oops]", "[link=http://evil.example]x[/link] \x1b]0;pwn\x07")
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table)
    text = out.getvalue()
    assert "GET /zz/[/oops]" in text
    assert "[link=http://evil.example]" in text
    assert "\x1b" not in text and "\\x1b" in text
