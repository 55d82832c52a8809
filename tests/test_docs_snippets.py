"""Every Python block of README.md and docs/*.md runs as written, imports included.

Each ```python block is a program of its own, run in a fresh module from an empty temporary
directory (so nothing lands in the repository). A block may say, in an HTML comment on the
line right before its fence, that it is not standalone:

- ``<!-- snippet: continues -->``: it goes on from the block before it (same page), and the
  two run as one program;
- ``<!-- snippet: skip REASON -->``: it cannot run here (it needs a real API key, say). Kept
  rare: every skip shows in the test report with its reason.

Top-level ``await`` is allowed (as in ``python -m asyncio`` or a notebook): such a program
runs under ``asyncio.run``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages whose blocks cannot be run yet, with the reason (each shows as a skip in the report).
NOT_YET: dict[str, str] = {}

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*snippet:\s*(\S+)\s*(.*?)\s*-->$")


@dataclass
class Snippet:
    page: str
    line: int  # the first block's fence, 1-based
    source: str
    skip: str | None = None
    blocks: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The programs of one page: its ```python blocks, joined where a block continues."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Snippet] = []
    at = 0
    while at < len(lines):
        fence = _FENCE.match(lines[at])
        if fence is None:
            at += 1
            continue
        end = next((n for n in range(at + 1, len(lines)) if lines[n].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{page}:{at + 1}: a code block that never closes")
        if fence.group(1) == "python":
            body = "\n".join(lines[at + 1 : end]) + "\n"
            marker = _marker(lines, at, page)
            if marker is not None and marker[0] == "continues":
                if not found:
                    raise AssertionError(f"{page}:{at + 1}: continues, but no block before it")
                # Blank lines keep the line numbers of a traceback those of the page.
                previous = found[-1]
                previous.source += "\n" * (at + 1 - previous.source.count("\n")) + body
                previous.blocks.append(at + 1)
            else:
                skip = marker[1] if marker is not None else NOT_YET.get(page)
                # Blank lines first, so a traceback's line numbers are the page's.
                found.append(Snippet(page, at + 1, "\n" * (at + 1) + body, skip, [at + 1]))
        at = end + 1
    return found


def _marker(lines: list[str], fence: int, page: str) -> tuple[str, str] | None:
    """The ``<!-- snippet: ... -->`` comment right before the fence at ``fence``, if any."""
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before < 0:
        return None
    match = _MARKER.match(lines[before].strip())
    if match is None:
        if "snippet:" in lines[before]:
            raise AssertionError(f"{page}:{before + 1}: a snippet marker that does not parse")
        return None
    kind, reason = match.groups()
    if kind == "skip" and not reason:
        raise AssertionError(f"{page}:{before + 1}: a skip must say why")
    if kind not in ("continues", "skip"):
        raise AssertionError(f"{page}:{before + 1}: unknown snippet marker {kind!r}")
    return kind, reason


ALL = [snippet for path in PAGES for snippet in snippets(path)]


def test_every_page_is_collected() -> None:
    assert {s.page for s in ALL} >= {"README.md", "docs/concepts.md", "docs/parallel.md"}


def test_skips_are_rare_and_say_why() -> None:
    skipped = [s for s in ALL if s.skip is not None and s.page not in NOT_YET]
    assert len(skipped) <= 2, [s.name for s in skipped]
    assert all(s.skip for s in skipped)


@pytest.mark.parametrize("snippet", ALL, ids=[s.name for s in ALL])
def test_snippet_runs(
    snippet: Snippet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if snippet.skip is not None:
        pytest.skip(snippet.skip)
    monkeypatch.chdir(tmp_path)
    # A real module, so that classes defined in the block (pydantic models, dataclasses) can
    # find their own module as they would in a script.
    module = types.ModuleType("snippet")
    module.__file__ = str(ROOT / snippet.page)
    monkeypatch.setitem(sys.modules, "snippet", module)
    code = compile(
        snippet.source, str(ROOT / snippet.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    try:
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, module.__dict__))
        else:
            exec(code, module.__dict__)
    finally:
        # A block that failed before its own `ray.shutdown()` must not leave Ray running for
        # the tests after it (their `ray.init` would fail, every one of them).
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    capsys.readouterr()  # what it printed is for the reader; running without error is the test


def test_markers_join_and_skip_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n"
        "<!-- snippet: continues -->\n```python\nassert x == 1\n```\n\n"
        "<!-- snippet: skip needs a key -->\n```python\nraise SystemExit\n```\n\n"
        "```text\nnot python\n```\n",
        encoding="utf-8",
    )
    first, second = snippets(page)
    assert first.blocks == [1, 6] and first.skip is None
    exec(compile(first.source, "page.md", "exec"), {})
    assert second.skip == "needs a key"
    page.write_text("<!-- snippet: sikp typo -->\n```python\npass\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="unknown snippet marker 'sikp'"):
        snippets(page)


def test_docs_and_examples_speak_of_the_project_only() -> None:
    # A reader has this project, not the notes it was built from.
    pattern = re.compile(r"\bthe spec\b|\bspec's\b|\bOption D\b", re.IGNORECASE)
    files = [*PAGES, *sorted((ROOT / "examples").glob("*.py"))]
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_the_names_the_readme_says_import_from_the_package_do() -> None:
    import rh_agents

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text[text.index("**Imports.**") :].split("\n\n", 1)[0]
    claimed = paragraph.split("Each also lives", 1)[0]
    names = re.findall(r"`([A-Z][A-Za-z]+)`", claimed)
    assert len(names) >= 10, names
    assert [name for name in names if name not in rh_agents.__all__] == []
