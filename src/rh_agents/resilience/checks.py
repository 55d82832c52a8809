"""``check_policy``: the one check that a policy given anywhere is the policy it should be.

Every place that takes a policy (the state, a group, an actor, an event, ``p.add``) checks it
as it is given, so a wrong value fails there, naming the option, rather than when a call
first needs it::

    check_policy("retry", RetryPolicy(max_attempts=3), RetryPolicy)   # fine
    check_policy("retry", 3, RetryPolicy)    # ConfigurationError: retry must be a RetryPolicy ...
"""

from __future__ import annotations

from typing import Any

from rh_agents.errors import ConfigurationError

__all__ = ["check_policy"]


def check_policy(label: str, value: Any, expected: type) -> None:
    """A ``ConfigurationError`` unless ``value`` is ``None`` or an ``expected`` policy."""
    if value is not None and not isinstance(value, expected):
        raise ConfigurationError(
            f"{label} must be a {expected.__name__} (from rh_agents.resilience), got {value!r}"
        )
