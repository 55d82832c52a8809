"""Text from a run made safe to print: control characters shown, never sent to the terminal.

Names, inputs and error messages come from user code and the services it calls, and may hold
control characters (an ANSI colour code in a subprocess's error, a NUL, a carriage return). Sent
as they are, they would recolour or clear the terminal, or hide part of a line, and a log would
hold control codes. ``printable`` replaces each one (except newline and tab) with its visible
picture, one character for one, so offsets and styles of a ``rich`` text stay where they were::

    printable("bad\\x1b[2J")   # 'bad␛[2J'
"""

from __future__ import annotations

import re

__all__ = ["one_line", "printable"]

# C0 controls but newline and tab, DEL, and the C1 controls (which some terminals obey too).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_PICTURES = {code: chr(0x2400 + code) for code in range(0x20) if code not in (0x09, 0x0A)}
_PICTURES[0x7F] = "\u2421"  # ␡
_PICTURES.update({code: "\ufffd" for code in range(0x80, 0xA0)})  # no pictures for C1


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab replaced by a visible one."""
    if _CONTROL.search(text) is None:  # the usual case: nothing to copy
        return text
    return text.translate(_PICTURES)


def one_line(text: str) -> str:
    """``printable(text)`` on one line: each line break shown as `` ⏎ `` (a multi-line error
    message, a name with a newline), for rows and lines a display lays out as one."""
    if "\n" not in text:
        return printable(text)
    return _BREAK.sub(" ⏎ ", printable(text.replace("\r\n", "\n")))


_BREAK = re.compile(r"[ \t]*\n\s*")  # a line break and the spaces around it
