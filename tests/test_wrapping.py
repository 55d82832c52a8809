"""Long lines are cut between words to the console's width, never inside a word."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.text import Text

from rh_agents.bus_handlers.wrapping import wrap

LINE = "  ⚠ 📦 docs: 3 finished · 1 ok · 2 failed (1 timed out, 1 cancelled) · 2.50s"


def plain(text: Text | str, width: int, hang: int = 4) -> list[str]:
    return [piece.plain for piece in wrap(text, width, hang=hang)]


def test_a_line_that_fits_is_left_alone() -> None:
    assert plain(LINE, 200) == [LINE]


def test_items_stay_whole_when_they_fit_and_no_line_starts_with_a_separator() -> None:
    assert plain(LINE, 40) == [
        "  ⚠ 📦 docs: 3 finished · 1 ok ·",
        "      2 failed (1 timed out, 1",
        "      cancelled) · 2.50s",
    ]
    assert plain(LINE, 60) == [
        "  ⚠ 📦 docs: 3 finished · 1 ok ·",
        "      2 failed (1 timed out, 1 cancelled) · 2.50s",
    ]


def test_a_word_wider_than_a_line_is_cut_and_nothing_is_lost() -> None:
    assert plain("error: abcdefghijklmnopqrstuvwxyz", 12, hang=2) == [
        "error:",
        "  abcdefghij",
        "  klmnopqrst",
        "  uvwxyz",
    ]


def test_styles_carry_over_to_every_piece() -> None:
    pieces = wrap(Text.from_markup("[red]one two three four[/red]"), 10, hang=2)
    assert [p.plain for p in pieces] == ["one two", "  three", "  four"]
    for piece in pieces:
        assert all(span.style == "red" for span in piece.spans) and piece.spans


def test_newlines_start_new_lines() -> None:
    assert plain("a b c\n  d e f", 4, hang=0) == ["a b", "c", "  d", "  e", "  f"]


@given(
    st.lists(st.sampled_from(["a", "bb", "ccc", "·", "📦", "x" * 15]), max_size=30),
    st.integers(1, 40),
    st.integers(0, 6),
)
def test_every_piece_fits_and_the_words_come_back_in_order(
    words: list[str], width: int, hang: int
) -> None:
    text = "  " + " ".join(words)
    pieces = plain(text, width, hang)
    if cell_len(text) > width:
        assert all(cell_len(piece) <= max(width, 2) for piece in pieces), pieces
    assert "".join("".join(piece.split()) for piece in pieces) == "".join(text.split())
