"""The offline demo: a research digest over a few dozen bundled documents.

An ``Orchestrator`` agent fans out over the documents (a parallel group, ``documents``); each
member is a ``reader`` agent that runs its own nested group (``steps``): a simulated LLM writes
a summary while a tool extracts keywords. A ``digest`` tool then joins whatever succeeded. No
key, no network: latencies and transient LLM failures come from a generator seeded per
document, so every run fails the same documents, whatever order they finish in::

    digest = rh_agents.run(run_demo(documents=30, workers=8, mode="progress"))

The run is shown by ``ParallelEventPrinter`` and saved, as ``demo-<date>-<time>``, in the
default store (``RH_AGENTS_STATE``, else ``~/.local/state/rh_agents/state.db``), so
``rh-agents runs list``, ``show``, ``timeline`` and ``resume`` have something to look at right
after it. It uses ``Recovery(resume="auto")``: ``rh-agents demo --run-id ID`` resumes run ID
(after a Ctrl-C, say) or makes it. ``rh-agents demo --help`` lists the options.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from collections import Counter
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.parallel_printer import PARALLEL_MODES, ParallelMode
from rh_agents.bus_handlers.wrapping import wrap
from rh_agents.core.actors import LLM, Agent, BaseActor, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import ExecutionState
from rh_agents.demo_data import DOCUMENTS, MAX_DOCUMENTS
from rh_agents.errors import ConfigurationError
from rh_agents.observability.timeline import TimelineRecorder
from rh_agents.recovery import Recovery, open_backend
from rh_agents.recovery.backend import default_state_path
from rh_agents.recovery.session import current_argv, shell_join
from rh_agents.resilience import RetryPolicy

__all__ = [
    "DOCUMENTS",
    "Corpus",
    "Document",
    "SimulatedProviderError",
    "Summaries",
    "Summary",
    "build_actors",
    "demo_command",
    "new_demo_run_id",
    "outro",
    "run_demo",
]


class SimulatedProviderError(RuntimeError):
    """The simulated LLM's transient failure (what a real provider's 503 would be)."""


class Document(BaseModel):
    index: int
    title: str
    text: str


class Summary(BaseModel):
    title: str
    text: str
    keywords: list[str]


class Corpus(BaseModel):
    documents: list[Document]


class Summaries(BaseModel):
    summaries: list[Summary]
    failed: int


def build_actors(
    *, seed: int = 7, failure_rate: float = 0.1, workers: int = 8, latency: float = 1.0
) -> dict[str, BaseActor]:
    """The demo's actors. ``latency`` scales every simulated wait (0 makes the run instant)."""

    def rng_for(doc: Document, step: str, attempt: int = 1) -> random.Random:
        # Seeded per document, step and attempt, never shared: every run fails the same way.
        return random.Random(f"{seed}:{doc.index}:{step}:{attempt}")

    # Attempts made so far per document. Each key belongs to one document, whose attempts run
    # one after another (the retry policy waits between them), so no two tasks ever touch the
    # same entry.
    attempts: dict[int, int] = {}

    async def summarize(input: Document, context: str, state: ExecutionState) -> str:
        attempt = attempts[input.index] = attempts.get(input.index, 0) + 1
        rng = rng_for(input, "llm", attempt)
        await asyncio.sleep(latency * rng.uniform(0.15, 0.5))
        if rng.random() < failure_rate:
            raise SimulatedProviderError("503 upstream overloaded (simulated transient error)")
        first = input.text.split(",")[0].split(";")[0].split(":")[0]
        return " ".join(first.split()[:12])

    async def keywords(input: Document, context: str, state: ExecutionState) -> list[str]:
        await asyncio.sleep(latency * rng_for(input, "tool").uniform(0.02, 0.06))
        words = [w.strip(".,:;").lower() for w in input.text.split()]
        return [word for word, _ in Counter(w for w in words if len(w) > 7).most_common(3)]

    llm = LLM(
        name="summarizer",
        description="Simulated LLM: a one-line summary",
        input_model=Document,
        handler=summarize,
        # Transient provider errors are retried; the backoff holds no worker slot.
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1 * latency, jitter=0.0),
    )
    tool = Tool(
        name="keywords",
        description="The document's longest recurring words",
        input_model=Document,
        handler=keywords,
    )

    async def read(input: Document, context: str, state: ExecutionState) -> Summary:
        # A nested group inside each member: the LLM call and the tool run side by side.
        async with state.parallel(max_workers=2, name="steps") as p:
            p.add("summary", ExecutionEvent(actor=llm)(input, context, state))
            p.add("keywords", ExecutionEvent(actor=tool)(input, context, state))
            steps = await p.gather_dict()
        return Summary(
            title=input.title,
            text=steps["summary"].unwrap(),  # a failed summary fails this document
            keywords=steps["keywords"].unwrap(),
        )

    reader = Agent(
        name="reader",
        description="Summarises one document",
        input_model=Document,
        handler=read,
        output_model=Summary,
    )

    async def join(input: Summaries, context: str, state: ExecutionState) -> str:
        themes = Counter(k for s in input.summaries for k in s.keywords).most_common(6)
        lines = [f"Themes: {', '.join(word for word, _ in themes)}"]
        lines.extend(f" • {s.title}: {s.text}" for s in input.summaries[:5])
        if len(input.summaries) > 5:
            lines.append(f"   … and {len(input.summaries) - 5} more summaries")
        return "\n".join(lines)

    digest = Tool(
        name="digest", description="Joins the summaries", input_model=Summaries, handler=join
    )

    async def orchestrate(input: Corpus, context: str, state: ExecutionState) -> str:
        async with state.parallel(max_workers=workers, name="documents") as p:
            for doc in input.documents:
                p.add(ExecutionEvent(actor=reader)(doc, context, state))
            results = await p.gather()
        summaries = [r.result for r in results if r.ok and isinstance(r.result, Summary)]
        failed = len(results) - len(summaries)
        report = Summaries(summaries=summaries, failed=failed)
        text: str = (await ExecutionEvent(actor=digest)(report, context, state)).unwrap()
        header = f"Digest of {len(summaries)} of {len(results)} documents"
        if failed:
            header += f" ({failed} failed: their errors are listed above)"
        return f"{header}\n{text}"

    orchestrator = Agent(
        name="Orchestrator",
        description="Builds the digest",
        input_model=Corpus,
        handler=orchestrate,
    )
    return {"orchestrator": orchestrator, "reader": reader, "summarizer": llm, "keywords": tool}


INTRO = """\
[bold]rh_agents demo[/bold]: a research digest over {documents} documents (offline, simulated LLM)
  Orchestrator → parallel group [cyan]documents[/cyan] (max_workers={workers})
    └ reader agent per document → nested group [cyan]steps[/cyan]: summarizer (LLM, \
{rate:.0%} transient failures) ∥ keywords (tool)
  then a digest tool joins what succeeded; a failure never stops the others (FAIL_SLOW).
  Display: ParallelEventPrinter(parallel_mode="{mode}")
"""

# Other ways to watch the demo, by the mode they show; the footer leaves out the mode just seen.
TRY: dict[str, str] = {
    "realtime": "rh-agents demo --mode realtime   (every event, tagged with its group and index)",
    "collapsed": "rh-agents demo --mode collapsed --failure-rate 0.3 --workers 4",
    "progress": "rh-agents demo --mode progress   (a live bar per group, its members beneath)",
}


def outro(mode: str) -> str:
    """The footer: two other modes to try (never the one that just ran)."""
    first, second = [line for shown, line in TRY.items() if shown != mode][:2]
    return f"Try: {first}\n     {second}"


def new_demo_run_id(store: str | Path | None = None) -> str:
    """``demo-<date>-<time>``, with ``-2``, ``-3``... if the store already has that id."""
    base = datetime.datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    path = Path(store) if store is not None else default_state_path()
    if not path.exists():
        return base
    with open_backend(path, mode="read") as backend:
        taken = {run.run_id for run in backend.list_runs()}
    run_id, n = base, 1
    while run_id in taken:
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def demo_command(
    run_id: str,
    *,
    documents: int = 30,
    workers: int = 8,
    failure_rate: float = 0.1,
    seed: int = 7,
    store: str | Path | None = None,
) -> str:
    """The command that runs (or resumes) this demo run: ``rh-agents demo --run-id ID`` and
    the options that differ from the defaults (the program as it was started, when that was
    the demo: ``.venv/bin/rh-agents demo``, ``python -m rh_agents demo``)."""
    words = current_argv()
    at = words.index("demo") if "demo" in words else 0
    started_as_demo = at > 0 and (
        words[at - 1].endswith("rh-agents") or words[at - 1] == "rh_agents"
    )
    command = words[: at + 1] if started_as_demo else ["rh-agents", "demo"]
    command += ["--run-id", run_id]
    for flag, value, default in (
        ("--documents", documents, 30),
        ("--workers", workers, 8),
        ("--failure-rate", failure_rate, 0.1),
        ("--seed", seed, 7),
    ):
        if value != default:
            command += [flag, str(value)]
    if store is not None:
        command += ["--state", str(store)]
    return shell_join(command)


def _say(console: Console, text: Text | str, *, hang: int = 2) -> None:
    """Print ``text`` wrapped at word boundaries to the console's width (a terminal would cut
    words and lose the indentation); continuation lines are indented ``hang`` more."""
    for piece in wrap(text, console.width, hang=hang):
        console.print(piece, soft_wrap=True, highlight=False)


async def run_demo(
    *,
    file: IO[str] | None = None,
    console: Console | None = None,
    documents: int = 30,
    workers: int = 8,
    mode: ParallelMode = "smart",
    failure_rate: float = 0.1,
    seed: int = 7,
    latency: float = 1.0,
    timeline: str | Path | None = None,
    run_id: str | None = None,
    store: str | Path | None = None,
    save: bool = True,
    ui: Any = None,
) -> str:
    """Run the digest with a ``ParallelEventPrinter`` and return the digest text.

    ``timeline``: also write the run's timeline (HTML, ``TimelineRecorder``) to that file.
    ``run_id``: the run to save it as, or to resume if it exists (default: a new
    ``demo-<date>-<time>``); ``store``: where (default: the default store); ``save=False``
    keeps nothing. ``ui``: a started ``rh_agents.ui.Viewer`` that watches the run live.
    """
    if not 1 <= documents <= MAX_DOCUMENTS:
        raise ConfigurationError(
            f"documents must be >= 1 and at most {MAX_DOCUMENTS} (the corpus is built before "
            f"the run), got {documents}"
        )
    if workers < 1:
        raise ConfigurationError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= failure_rate <= 1.0:
        raise ConfigurationError(f"failure_rate must be between 0 and 1, got {failure_rate}")
    if mode not in PARALLEL_MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
    if console is None:
        console = Console(file=file, highlight=False, soft_wrap=True)
    intro = INTRO.format(documents=documents, workers=workers, rate=failure_rate, mode=mode)
    _say(console, Text.from_markup(intro))
    console.print()
    corpus = Corpus(
        documents=[
            Document(index=i, title=title, text=text)
            for i, (title, text) in enumerate(
                DOCUMENTS[j % len(DOCUMENTS)] for j in range(documents)
            )
        ]
    )
    actors = build_actors(seed=seed, failure_rate=failure_rate, workers=workers, latency=latency)
    recovery: Recovery | None = None
    if save:
        run_id = run_id if run_id is not None else new_demo_run_id(store)
        command = demo_command(
            run_id,
            documents=documents,
            workers=workers,
            failure_rate=failure_rate,
            seed=seed,
            store=store,
        )
        recovery = Recovery(store, resume="auto", resume_command=command)
    bus = EventBus()
    with ParallelEventPrinter(mode, console=console) as printer:
        bus.subscribe(printer)
        recorder = TimelineRecorder() if timeline is not None else None
        if recorder is not None:
            bus.subscribe(recorder)
        async with ExecutionState(event_bus=bus, run_id=run_id, recovery=recovery) as state:
            if recovery is not None and recovery.resumed:
                _say(console, f"Resuming run {run_id}: what it finished is replayed.")
            if ui is not None:
                _say(console, f"Watch it live: {ui.run_url(ui.watch(state))}")
            result: ExecutionResult[Any] = await ExecutionEvent(actor=actors["orchestrator"])(
                corpus, "", state
            )
        await bus.close()
    if ui is not None:
        ui.finish(state, "completed" if result.ok else "failed")
    digest = str(result.unwrap())
    console.print()
    _say(console, digest)
    console.print()
    if recorder is not None and timeline is not None:
        written = recorder.timeline("rh-agents demo").write_html(timeline)
        console.print(f"Timeline written to {written}", highlight=False, markup=False)
    if recovery is not None and state.run_id is not None:
        _saved(console, state.run_id, store)
        console.print()
    for line in outro(mode).splitlines():
        # Continuation lines go on under the command, after "Try: ".
        _say(console, line, hang=2 if line.startswith(" ") else 7)
    return digest


def _saved(console: Console, run_id: str, store: str | Path | None) -> None:
    """Where the run was saved, and the commands that look at it (never wrapped: they are
    to be copied)."""
    where = Path(store) if store is not None else default_state_path()
    option = "" if store is None else f" --state {shell_join([str(store)])}"
    _say(console, f"Saved as run {run_id} (in {where}). Look at it with:")
    for command in (
        f"rh-agents runs show {run_id}{option}",
        f"rh-agents runs timeline {run_id}{option} --out timeline.html",
        f"rh-agents runs list{option}",
    ):
        console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
