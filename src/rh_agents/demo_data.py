"""The short documents the offline demo digests (bundled, so the demo needs no network).

Each is a ``(title, text)`` pair of a sentence or two about running AI workloads::

    from rh_agents.demo_data import DOCUMENTS
    title, text = DOCUMENTS[0]
"""

from __future__ import annotations

__all__ = ["DOCUMENTS", "MAX_DOCUMENTS"]

# The most documents a demo run digests (``rh-agents demo --documents``): the corpus is built
# whole before the run starts, so a huge count would only hang building it. Ten thousand
# already shows a large group (and runs for minutes).
MAX_DOCUMENTS = 10_000

DOCUMENTS: list[tuple[str, str]] = [
    (
        "Worker pools",
        "A bounded pool of workers keeps memory flat: ten thousand queued documents need only "
        "as many running tasks as there are workers.",
    ),
    (
        "Rate limits",
        "Providers enforce requests per minute; a 429 response with a Retry-After header says "
        "exactly when the next request will be accepted.",
    ),
    (
        "Circuit breakers",
        "A breaker stops calling a dependency that keeps failing, then lets a single probe "
        "through after a cool-down to see whether it recovered.",
    ),
    (
        "Checkpoints",
        "Writing each finished result to a checkpoint lets a crashed pipeline resume without "
        "paying twice for the calls that already succeeded.",
    ),
    (
        "Deterministic addresses",
        "Naming every call by its path and submission index makes two runs of the same code "
        "comparable line by line, whatever order tasks finished in.",
    ),
    (
        "Fail slow, fail fast",
        "Collecting every partial result suits batch summarisation; cancelling the rest on the "
        "first error suits validation steps where one failure decides the outcome.",
    ),
    (
        "Exponential backoff",
        "Retrying after doubling delays with random jitter spreads clients apart, so a "
        "recovering service is not hit by a synchronised stampede.",
    ),
    (
        "Token budgets",
        "Long documents are chunked so every prompt fits the context window, and the chunk "
        "summaries are merged in a second, cheaper pass.",
    ),
    (
        "Map and reduce",
        "Summarise each document independently, then reduce the summaries into one digest: the "
        "map step parallelises, the reduce step sees the whole picture.",
    ),
    (
        "Structured output",
        "Asking a model for JSON that matches a schema turns free text into typed records that "
        "downstream code can validate instead of parse.",
    ),
    (
        "Tool calling",
        "A model that can call a search tool or a calculator answers with fresher facts and "
        "fewer arithmetic slips than one that must recall everything.",
    ),
    (
        "Evaluation sets",
        "A few dozen hand-checked questions with expected answers catch regressions in a prompt "
        "change long before users notice them.",
    ),
    (
        "Caching",
        "Keying cached answers by model, prompt version and input means an unchanged document "
        "costs nothing the second time it is summarised.",
    ),
    (
        "Streaming results",
        "Handing each result to the next stage as soon as it is ready shortens the time to the "
        "first useful output, even when the batch is large.",
    ),
    (
        "Timeouts",
        "Every remote call needs a deadline; a group deadline keeps the results that finished "
        "and reports the stragglers instead of hanging.",
    ),
    (
        "Cancellation",
        "When the user gives up, every in-flight request should be cancelled promptly and no "
        "background task should be left running.",
    ),
    (
        "Priorities",
        "Interactive requests jump ahead of batch work in the queue, so a nightly job does not "
        "make the chat window feel slow.",
    ),
    (
        "Dependencies",
        "Some steps need others first: extracting entities must finish before linking them, "
        "and a failed extraction skips the linking step.",
    ),
    (
        "Observability",
        "Queue wait, run time percentiles and concurrency high-water marks show whether a slow "
        "run waited for workers or for the provider.",
    ),
    (
        "Cost control",
        "Counting tokens per call and per group makes the cost of a pipeline visible before "
        "the monthly invoice does.",
    ),
    (
        "Model routing",
        "Cheap models handle easy documents and expensive ones the hard cases; a classifier "
        "step decides which route each document takes.",
    ),
    (
        "Hallucination checks",
        "A second pass that verifies each claim against the source text flags summaries that "
        "state things the document never said.",
    ),
    (
        "Embeddings",
        "Vector embeddings group similar documents, so a digest can lead with themes rather "
        "than with whichever file came first.",
    ),
    (
        "Idempotency",
        "A retried write must not duplicate its effect; an idempotency key lets the server "
        "recognise a request it already handled.",
    ),
    (
        "Nested fan-out",
        "Each document fans out to its own steps, summary and keywords in parallel, inside a "
        "pipeline that already runs documents in parallel.",
    ),
    (
        "Global limits",
        "A cap over all groups keeps nested fan-out from multiplying into more concurrent "
        "calls than the provider allows.",
    ),
    (
        "Adaptive concurrency",
        "Growing the number of workers while calls succeed and halving it on overload signals "
        "finds the provider's real capacity without a config change.",
    ),
    (
        "Readable terminals",
        "Forty interleaved log lines are noise; a progress bar per group with failures listed "
        "beneath it tells the same story at a glance.",
    ),
    (
        "Replay",
        "Recording every event lets a developer replay a failed run offline and step through "
        "exactly what the agents saw.",
    ),
    (
        "Human review",
        "Low-confidence answers are routed to a reviewer queue instead of being published, and "
        "the reviewer's corrections become new evaluation cases.",
    ),
]
