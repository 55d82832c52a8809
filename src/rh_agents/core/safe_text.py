"""Text from a run made safe to print: control characters shown, never sent to the terminal.

Names, inputs and error messages come from user code and the services it calls, and may hold
control characters (an ANSI colour code in a subprocess's error, a NUL, a carriage return). Sent
as they are, they would recolour or clear the terminal, or hide part of a line, and a log would
hold control codes. ``printable`` replaces each one (except newline and tab) with its visible
picture, one character for one, so offsets and styles of a ``rich`` text stay where they were::

    printable("bad\\x1b[2J")   # 'bad␛[2J'

A lone surrogate (a file name decoded with ``os.fsdecode``, as a JSON store keeps it in an
error) becomes "?": it cannot be encoded as UTF-8, so writing it failed or sent raw bytes.

``local_time`` shows a stored timestamp as local time, or "?" when it is no time at all (a
damaged store's NaN or 1e20), so one bad value does not fail a whole listing.

``clipped`` bounds what a display shows of one error message (an HTTP error's whole HTML
body can make one of 100 KB): the first ``ERROR_CHARS`` characters and how many were left out.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

__all__ = ["ERROR_CHARS", "clipped", "local_time", "markup_escape", "one_line", "printable"]

# What a display shows of one error at most: about ten lines of a terminal. The whole error
# stays in the member's result and in the history.
ERROR_CHARS: Final = 1000

# C0 controls but newline and tab, DEL, and the C1 controls (which some terminals obey too).
# Lone surrogates too: no terminal encoding can write them. And the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069): a name holding U+202E shows the
# rest of its line reversed, so what is printed is not what ran ("Trojan Source").
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_PICTURES = {code: chr(0x2400 + code) for code in range(0x20) if code not in (0x09, 0x0A)}
_PICTURES[0x7F] = "\u2421"  # ␡
_PICTURES.update({code: "\ufffd" for code in range(0x80, 0xA0)})  # no pictures for C1
_PICTURES.update({code: "?" for code in range(0xD800, 0xE000)})  # as the viewer's pages show them
_PICTURES.update({code: "\ufffd" for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
# The Unicode line and paragraph separators break a line as "\n" does (a terminal, an editor,
# str.splitlines): they become one, so that one_line shows them as it shows any line break.
_PICTURES.update({0x2028: "\n", 0x2029: "\n"})


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab replaced by a visible one
    (a bidirectional override by "\ufffd"), and every lone surrogate by "?"."""
    if _CONTROL.search(text) is None:  # the usual case: nothing to copy
        return text
    return text.translate(_PICTURES)


def local_time(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as local ``YYYY-MM-DD HH:MM:SS``, or "?" when
    it names no time a calendar can show (NaN, infinite, or out of range: 1e20, -1e15)."""
    try:
        return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        # A damaged store (or a clock gone wrong) wrote it: unknown, not an error, so the
        # listing it is part of still shows every other run.
        return "?"


def one_line(text: str) -> str:
    """``printable(text)`` on one line: each line break shown as `` ⏎ `` (a multi-line error
    message, a name with a newline), for rows and lines a display lays out as one."""
    shown = printable(text.replace("\r\n", "\n") if "\r" in text else text)
    if "\n" not in shown:
        return shown
    return _BREAK.sub(" ⏎ ", shown)


_BREAK = re.compile(r"[ \t]*\n\s*")  # a line break and the spaces around it


def clipped(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` followed by
    `` … (N more characters)``: one error takes bounded room (and time) in a display."""
    left_out = len(text) - limit
    if left_out <= 0:
        return text
    return f"{text[:limit]} … ({left_out} more character{'' if left_out == 1 else 's'})"


# Rich markup: a run of backslashes before a tag-like "[name...]" is halved, and an odd one
# makes the tag literal text; elsewhere "\\[" reads as "[".
_BRACKET = re.compile(r"(\\*)\[")
_TAG_BODY = re.compile(r"[a-z#/@][^[]*?]")
_TRAILING = re.compile(r"\\+$")


def markup_escape(text: str) -> str:
    """``text`` as rich markup that renders exactly ``text``, whatever follows it.

    ``rich.markup.escape`` loses a backslash before a bracket that is not a tag
    (``\\[\\d+\\]``), and text ending in backslashes or in an unclosed ``[/`` can swallow or
    break the tag after it. Here each run of backslashes before a bracket is written so that
    it renders as itself, and the text is closed off by an empty tag pair (``[dim][/dim]``,
    which renders as nothing) whenever what follows could otherwise reach into it.
    """
    if "[" not in text and not text.endswith("\\"):
        return text

    def bracket(match: re.Match[str]) -> str:
        slashes = len(match.group(1))
        if _TAG_BODY.match(text, match.end()):  # a whole tag in the text: made literal
            return "\\" * (2 * slashes + 1) + "["
        return "\\" * (slashes + 1 if slashes else 0) + "["

    escaped = _BRACKET.sub(bracket, text)
    trailing = _TRAILING.search(escaped)
    if trailing is not None:
        escaped = escaped[: trailing.start()] + "\\" * (2 * len(trailing.group()))
    return escaped + "[dim][/dim]"
