"""Text that came from traffic, made safe for an operator's terminal.

Paths, endpoints, field names, values, error details, URLs and versions in a report come
from clients and upstreams. Given to rich as a ``str`` they are read as console markup: a
request to ``GET /zz/[/oops]`` crashes the report (``MarkupError``), ``[link=...]`` makes
a clickable link, ``[blink]`` styles it. Printed at all, an ``ESC`` starts a terminal
escape sequence (retitle the window, rewrite the screen, OSC 8 links, ...).

- :func:`escape_terminal` (``str`` in, ``str`` out): control characters made visible
  (``\\x1b``, ``\\n``, ``\\u202e``), then rich markup escaped; for every place that takes a
  markup string (``Table.add_row`` with a ``str``, ``console.print(str)``, ``Panel`` titles).
- :func:`safe_text` (``str`` in, ``rich.text.Text`` out): control characters made visible,
  no markup read at all; for ``Text.assemble`` parts and cells with a style.

What is made visible: C0 controls (U+0000-U+001F, tab and newline included: a cell is one
line), DEL, C1 controls (U+0080-U+009F, where 8-bit CSI lives), the Unicode bidirectional
overrides and isolates (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C: text that
reads differently from what it is) and the line and paragraph separators (U+2028, U+2029).
"""

from __future__ import annotations

import logging
import re
from typing import Final

from rich.markup import escape
from rich.style import Style
from rich.text import Text

__all__ = ["escape_control", "escape_terminal", "safe_text"]

logger = logging.getLogger(__name__)

_CONTROL: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match[str]) -> str:
    ch = match.group(0)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(value: str) -> str:
    """``value`` with its control characters replaced by visible escapes (``\\x1b``);
    markup is not touched."""
    return _CONTROL.sub(_visible, value)


def escape_terminal(value: object) -> str:
    """``str(value)`` safe to give rich as a markup string: control characters visible,
    markup escaped, so that it prints as the characters it is (a trailing backslash is
    doubled by ``rich.markup.escape``, so that it cannot escape a tag that follows)."""
    return escape(escape_control(str(value)))


def safe_text(value: object, style: str | Style = "") -> Text:
    """``str(value)`` as a rich ``Text`` (never read as markup), control characters
    visible, in ``style``."""
    return Text(escape_control(str(value)), style=style)
