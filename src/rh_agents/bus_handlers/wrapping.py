"""Long lines cut to the console's width between words, never inside one.

A terminal wraps a long line wherever the width ends, in the middle of a word, and starts
again at the left edge, which breaks the indentation of a tree. ``wrap`` breaks between words
instead and indents the continuation lines, so a summary stays a tree at any width::

    for piece in wrap("⚠ 📦 docs: 30 finished · 28 ok · 2 failed · 1.63s", 24, hang=4):
        console.print(piece, soft_wrap=True)

gives::

    ⚠ 📦 docs: 30 finished ·
        28 ok · 2 failed ·
        1.63s

Items separated by ``" · "`` are kept whole when they fit on a line. Widths are terminal
cells (an emoji takes two). Styles of a ``Text`` carry over to its pieces.
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.text import Text

__all__ = ["wrap"]

_WORD = re.compile(r"\S+")
_SEPARATOR = "·"


def wrap(text: Text | str, width: int, *, hang: int = 2) -> list[Text]:
    """``text`` in lines of at most ``width`` cells, broken at spaces.

    The first line keeps the text's own indentation; the others are indented ``hang`` cells
    more. A line breaks after a `` · `` separator rather than inside an item when the item fits
    on a line of its own; a word wider than a whole line is cut (nothing is ever lost).
    """
    if isinstance(text, str):
        text = Text(text)
    plain = text.plain
    if "\n" in plain:
        return [piece for line in text.split("\n") for piece in wrap(line, width, hang=hang)]
    if cell_len(plain) <= width:
        return [text]
    lead = len(plain) - len(plain.lstrip(" "))
    if lead + 1 >= width:
        lead = 0
    cont = lead + hang if lead + hang + 1 < width else lead
    spans = _break(plain, _chunks(plain), width, lead, cont)
    # One divide for every line: slicing the text once per line (``text[start:end]``) copies
    # it whole each time, quadratic in its length (a 128 KB error took seconds).
    pieces = text.divide(offset for span in spans for offset in span)[1::2]
    return [Text(" " * (lead if n == 0 else cont)) + piece for n, piece in enumerate(pieces)]


def _chunks(plain: str) -> list[list[tuple[int, int]]]:
    """The words of ``plain`` (start and end offsets), grouped into items: each item ends
    with a ``·`` separator (or the text), which stays with the word before it, so that no
    line starts with one."""
    chunks: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for match in _WORD.finditer(plain):
        if match.group() != _SEPARATOR:
            current.append(match.span())
            continue
        if current:
            current[-1] = (current[-1][0], match.end())
        else:
            current.append(match.span())
        chunks.append(current)
        current = []
    if current:
        chunks.append(current)
    return chunks


def _break(
    plain: str, chunks: list[list[tuple[int, int]]], width: int, lead: int, cont: int
) -> list[tuple[int, int]]:
    """Greedy line breaking: the (start, end) offsets of each line's text."""
    lines: list[tuple[int, int]] = []
    start: int | None = None  # the current line's first offset (None: the line is empty)
    end = 0
    pad = lead

    def place(first: int, last: int) -> bool:
        """Extend the current line to ``last`` (starting it at ``first``) if that fits."""
        nonlocal start, end
        begin = first if start is None else start
        if pad + cell_len(plain[begin:last]) > width:
            return False
        start, end = begin, last
        return True

    def new_line() -> None:
        nonlocal start, pad
        if start is not None:
            lines.append((start, end))
        start, pad = None, cont

    for chunk in chunks:
        first, last = chunk[0][0], chunk[-1][1]
        if place(first, last):
            continue
        if start is not None:
            new_line()
            if place(first, last):
                continue
        for word_start, word_end in chunk:  # the item is wider than a line: word by word
            if place(word_start, word_end):
                continue
            if start is not None:
                new_line()
                if place(word_start, word_end):
                    continue
            # One word wider than a whole line: cut it into pieces that fit.
            piece = word_start
            while piece < word_end:
                cut = _cut(plain, piece, word_end, max(1, width - pad))
                start, end = piece, cut
                piece = cut
                if piece < word_end:
                    new_line()
    if start is not None:
        lines.append((start, end))
    return lines


def _cut(plain: str, start: int, stop: int, room: int) -> int:
    """The end of the longest piece ``plain[start:end]`` (at least one character, at most up
    to ``stop``) that fits in ``room`` cells.

    A binary search over the next ``room`` characters, then a look past them for zero-width
    ones (combining marks): O(room log room) per piece, where growing the piece a character
    at a time measured it ``room`` times.
    """
    low, high = start + 1, min(stop, start + room)
    while low < high:  # the largest end in (low, high] that fits, else low (one character)
        middle = (low + high + 1) // 2
        if cell_len(plain[start:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    while low < stop and cell_len(plain[start : low + 1]) <= room:
        low += 1
    return low
