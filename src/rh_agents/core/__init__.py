"""The framework core.

Layering, bottom up: ``clock`` and ``records`` (plain types) → ``results`` → ``context`` (the
execution path in a ContextVar) → ``actors`` → ``bus`` → ``events`` (one actor call) →
``parallel`` (groups and their scheduler) → ``execution`` (``ExecutionState``, which ties them
together). Nothing below imports from above, except at call time.
"""
