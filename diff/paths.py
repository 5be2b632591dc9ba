"""Paths into JSON bodies: a small JSONPath subset, compiled once, matched fast.

Syntax (every path starts at ``$``, the body's root)::

    $                 the root itself
    .name  ['name']   an object member (the bracket form takes any name: ['a.b'], ["x y"])
    [3]               an array element by index
    [*]  .*           any ONE level: every element of an array or member of an object
    ..name            ``name`` at any depth below (``$..request_id``), same as ``.**.name``
    .**               any depth, ZERO or more levels: ``$.meta.**`` is ``$.meta`` and
                      everything under it

A concrete location is a tuple of keys (``str``, object members) and indexes (``int``,
array elements): ``("items", 2, "price")`` renders as ``$.items[2].price``; its rule-level
"field", the form reports and noise group by, replaces indexes with ``[*]``:
``$.items[*].price``.

Matching one path against one location is :meth:`Path.matches`. The diff walker does not
match path by path: :class:`PathMatcher` turns a set of paths into a lazily built
deterministic automaton whose states it steps as it descends (``state.key("items")``,
``state.index(2)``), one dict lookup per level, so the cost of the rules does not grow with
the size of the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANY",
    "DEEP",
    "INDEX",
    "KEY",
    "Location",
    "MatchState",
    "Path",
    "PathMatcher",
    "compile_path",
    "render_field",
    "render_location",
]

Location = tuple[str | int, ...]

# Step kinds of a compiled path.
KEY = 0  # an object member with this name
INDEX = 1  # an array element with this index
ANY = 2  # any one level
DEEP = 3  # zero or more levels

Step = tuple[int, str | int | None]

_NAME_STOP = frozenset(".[]'\"* \t\r\n")


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled path: the text it came from and its steps."""

    text: str
    steps: tuple[Step, ...]

    @property
    def specificity(self) -> int:
        """How narrowly the path names a place: a literal step counts 2, ``*`` 1, ``**`` 0.

        Where several rules match one location, the most specific one judges it.
        """
        return sum(2 if kind in (KEY, INDEX) else 1 if kind == ANY else 0 for kind, _ in self.steps)

    def matches(self, location: Location) -> bool:
        """Whether this path names ``location`` (a tuple of keys and indexes)."""
        steps = self.steps
        positions = _closure(steps, {0})
        for part in location:
            nxt: set[int] = set()
            for pos in positions:
                if pos < len(steps):
                    kind, arg = steps[pos]
                    if kind == DEEP:
                        nxt.add(pos)
                    elif kind == ANY or (arg == part and (kind == KEY) == (type(part) is str)):
                        nxt.add(pos + 1)
            if not nxt:
                return False
            positions = _closure(steps, nxt)
        return len(steps) in positions

    def __str__(self) -> str:
        return self.text


def _closure(steps: Sequence[Step], positions: set[int]) -> set[int]:
    """Add the positions reachable without consuming a level (a ``**`` may match zero)."""
    out = set(positions)
    todo = list(positions)
    while todo:
        pos = todo.pop()
        if pos < len(steps) and steps[pos][0] == DEEP and pos + 1 not in out:
            out.add(pos + 1)
            todo.append(pos + 1)
    return out


def compile_path(text: str) -> Path:
    """Compile ``text``; ``ValueError`` names the bad part and where it is."""
    if not isinstance(text, str):
        raise ValueError(f"a path must be a string, got {type(text).__name__}")
    s = text.strip()
    if not s.startswith("$"):
        raise ValueError(f"path {text!r} must start with '$'")
    steps: list[Step] = []
    i, n = 1, len(s)

    def add(step: Step) -> None:
        if step[0] == DEEP and steps and steps[-1][0] == DEEP:
            return  # '**.**' is one '**'
        steps.append(step)

    def name_at(pos: int) -> tuple[str, int]:
        end = pos
        while end < n and s[end] not in _NAME_STOP:
            end += 1
        if end == pos:
            what = repr(s[pos]) if pos < n else "the end"
            raise ValueError(f"path {text!r}: expected a name at position {pos}, found {what}")
        return s[pos:end], end

    while i < n:
        c = s[i]
        if c == ".":
            if s.startswith("..", i):
                i += 2
                add((DEEP, None))
                if i >= n:
                    raise ValueError(f"path {text!r}: '..' must be followed by a name")
                if s[i] == "[":
                    continue
                if s.startswith("**", i):
                    i += 2
                elif s[i] == "*":
                    add((ANY, None))
                    i += 1
                else:
                    name, i = name_at(i)
                    add((KEY, name))
                continue
            i += 1
            if s.startswith("**", i):
                add((DEEP, None))
                i += 2
            elif i < n and s[i] == "*":
                add((ANY, None))
                i += 1
            else:
                name, i = name_at(i)
                add((KEY, name))
        elif c == "[":
            close = _bracket_end(s, i, text)
            inner = s[i + 1 : close].strip()
            i = close + 1
            if inner == "*":
                add((ANY, None))
            elif inner == "**":
                add((DEEP, None))
            elif inner[:1] in ("'", '"'):
                add((KEY, _unquote(inner, text)))
            elif inner.isdigit():
                add((INDEX, int(inner)))
            else:
                raise ValueError(
                    f"path {text!r}: bad subscript [{inner}] (use [n], [*] or ['name'])"
                )
        else:
            raise ValueError(
                f"path {text!r}: unexpected {c!r} at position {i} (expected '.' or '[')"
            )
    return Path(text=s, steps=tuple(steps))


def _bracket_end(s: str, start: int, text: str) -> int:
    """Index of the ``]`` closing the bracket at ``start``; quotes may hide a ``]``."""
    i = start + 1
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] in ("'", '"'):
        quote = s[i]
        i += 1
        while i < len(s) and s[i] != quote:
            i += 2 if s[i] == "\\" else 1
        if i >= len(s):
            raise ValueError(f"path {text!r}: unclosed quote at position {start + 1}")
        i += 1
    close = s.find("]", i)
    if close < 0:
        raise ValueError(f"path {text!r}: unclosed '[' at position {start}")
    return close


def _unquote(inner: str, text: str) -> str:
    quote = inner[0]
    if len(inner) < 2 or inner[-1] != quote:
        raise ValueError(f"path {text!r}: bad quoted name [{inner}]")
    body = inner[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
            continue
        if ch == quote:
            raise ValueError(f"path {text!r}: unescaped {quote} inside [{inner}]")
        out.append(ch)
        i += 1
    if not out:
        raise ValueError(f"path {text!r}: empty name in [{inner}]")
    return "".join(out)


_PLAIN_NAME = re.compile(r"[A-Za-z_$@][A-Za-z0-9_$@\-]*\Z")


def _render_key(key: str) -> str:
    if _PLAIN_NAME.match(key):
        return "." + key
    return "['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"


def render_location(location: Location) -> str:
    """``("items", 2, "price")`` -> ``$.items[2].price``."""
    parts = ["$"]
    for part in location:
        parts.append(f"[{part}]" if type(part) is int else _render_key(str(part)))
    return "".join(parts)


def render_field(location: Location) -> str:
    """The rule-level form of a location: indexes become ``[*]`` (``$.items[*].price``)."""
    parts = ["$"]
    for part in location:
        parts.append("[*]" if type(part) is int else _render_key(str(part)))
    return "".join(parts)


class MatchState:
    """One state of a :class:`PathMatcher`: which paths match here, which may match below.

    ``matched`` holds the indexes (into the matcher's paths) of the paths that name exactly
    this location; ``live`` those that may still name a location further down. ``info`` is
    whatever the matcher's ``annotate`` function computed for this state (the rules layer
    stores its judgement there). States are shared and immutable once built; transitions are
    built on first use. ``memo`` is a per-state cache for the automaton's users (the diff
    walker keeps what it derives from a state's children there, once per state).
    """

    __slots__ = (
        "_index_other",
        "_indexes",
        "_key_other",
        "_keys",
        "_owner",
        "info",
        "live",
        "matched",
        "memo",
        "positions",
    )

    def __init__(self, owner: PathMatcher, positions: frozenset[tuple[int, int]]) -> None:
        self._owner = owner
        self.positions = positions
        paths = owner.paths
        self.matched: tuple[int, ...] = tuple(
            sorted(p for p, pos in positions if pos == len(paths[p].steps))
        )
        self.live: frozenset[int] = frozenset(
            p for p, pos in positions if pos < len(paths[p].steps)
        )
        self._keys: dict[str, MatchState] | None = None
        self._key_other: MatchState | None = None
        self._indexes: dict[int, MatchState] = {}
        self._index_other: MatchState | None = None
        self.memo: dict[Any, Any] = {}
        self.info: Any = owner.annotate(self) if owner.annotate is not None else None

    @property
    def dead(self) -> bool:
        """No path matches here or anywhere below."""
        return not self.positions

    def key(self, name: str) -> MatchState:
        """The state at object member ``name`` below this one."""
        keys = self._keys
        if keys is None:
            keys = self._build()
        nxt = keys.get(name)
        if nxt is None:
            nxt = self._key_other
            assert nxt is not None
        return nxt

    def children(self) -> tuple[dict[str, MatchState], MatchState]:
        """``(states by member name, state for any other name)``: ``key()`` for hot loops."""
        keys = self._keys
        if keys is None:
            keys = self._build()
        other = self._key_other
        assert other is not None
        return keys, other

    def index(self, i: int) -> MatchState:
        """The state at array element ``i`` below this one."""
        if self._keys is None:
            self._build()
        nxt = self._indexes.get(i)
        if nxt is None:
            nxt = self._index_other
            assert nxt is not None
        return nxt

    def step(self, part: str | int) -> MatchState:
        return self.index(part) if type(part) is int else self.key(part)  # type: ignore[arg-type]

    def _build(self) -> dict[str, MatchState]:
        owner = self._owner
        paths = owner.paths
        names: set[str] = set()
        idxs: set[int] = set()
        for p, pos in self.positions:
            steps = paths[p].steps
            if pos < len(steps):
                kind, arg = steps[pos]
                if kind == KEY:
                    names.add(arg)  # type: ignore[arg-type]
                elif kind == INDEX:
                    idxs.add(arg)  # type: ignore[arg-type]
        self._key_other = owner._advance(self.positions, None, True)
        self._index_other = owner._advance(self.positions, None, False)
        self._indexes = {i: owner._advance(self.positions, i, False) for i in idxs}
        keys = {name: owner._advance(self.positions, name, True) for name in names}
        self._keys = keys
        return keys


class PathMatcher:
    """A set of paths as one lazily built automaton; ``root`` is the state at ``$``.

    ``annotate(state)`` is called once per state as it is built; its result is stored as
    ``state.info``.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        annotate: Callable[[MatchState], Any] | None = None,
    ) -> None:
        self.paths: tuple[Path, ...] = tuple(paths)
        self.annotate = annotate
        self._states: dict[frozenset[tuple[int, int]], MatchState] = {}
        self.root = self._state(
            frozenset(
                (p, pos) for p, path in enumerate(self.paths) for pos in _closure(path.steps, {0})
            )
        )

    def _state(self, positions: frozenset[tuple[int, int]]) -> MatchState:
        state = self._states.get(positions)
        if state is None:
            state = MatchState(self, positions)
            self._states[positions] = state
        return state

    def _advance(
        self, positions: frozenset[tuple[int, int]], part: str | int | None, is_key: bool
    ) -> MatchState:
        """The state after one level named ``part`` (None: a name no path spells out)."""
        out: set[tuple[int, int]] = set()
        for p, pos in positions:
            steps = self.paths[p].steps
            if pos >= len(steps):
                continue
            kind, arg = steps[pos]
            if kind == DEEP:
                out.add((p, pos))
            elif kind == ANY:
                out.add((p, pos + 1))
            elif part is not None and arg == part and (kind == KEY) == is_key:
                out.add((p, pos + 1))
        closed: set[tuple[int, int]] = set()
        for p, pos in out:
            closed.update((p, q) for q in _closure(self.paths[p].steps, {pos}))
        return self._state(frozenset(closed))

    def state_at(self, location: Location) -> MatchState:
        state = self.root
        for part in location:
            state = state.step(part)
        return state
