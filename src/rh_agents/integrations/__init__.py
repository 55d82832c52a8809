"""Optional integrations with other tools; each imports its package only when asked for.

- ``rh_agents.integrations.openai_llm``: an LLM actor for OpenAI-compatible chat completions
  (extra ``openai``).
- ``rh_agents.integrations.otel``: OpenTelemetry traces and metrics (extra ``otel``).
"""

__all__: list[str] = []
