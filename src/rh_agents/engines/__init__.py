"""Engines that core runs through its hooks (``rh_agents.core.hooks``), placed above it.

``policy_runner`` applies retries, circuit breakers, rate limits and the adaptive limit to
every call and group member. Importing this package installs it for every state made
afterwards (importing ``rh_agents`` does so)::

    import rh_agents.engines        # states now apply policies to their calls
"""

from rh_agents.core import hooks
from rh_agents.engines.policy_runner import PolicyRunner

__all__ = ["PolicyRunner"]

hooks.install_call_runner(PolicyRunner())
