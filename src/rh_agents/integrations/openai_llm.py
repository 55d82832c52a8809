"""An ``LLM`` actor for OpenAI-compatible chat completions, on the official ``openai`` client.

::

    from rh_agents.integrations.openai_llm import openai_llm

    chat = openai_llm("writer", model="gpt-4o-mini", timeout=30,
                      retry=RetryPolicy(max_attempts=4))       # actor options pass through
    reply = await ExecutionEvent(actor=chat)({"prompt": "Say hi"}, "", state)
    reply.result.content

The base URL and key come from the arguments or ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``. The
client's own retries are off (``max_retries=0``): retries belong to rh_agents' policies, which
see every attempt. A 429 becomes ``RateLimitedError`` carrying the server's ``Retry-After``
(an overload signal for the adaptive limit); a client timeout becomes ``TimeoutError``; other
HTTP errors keep openai's exception (with ``status_code`` and ``response``). A reply that is
not a chat completion (not JSON, HTML from a proxy, no choices) becomes
``MalformedCompletionError``.

Needs the ``openai`` extra: ``pip install 'rh-agents[openai]'``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from rh_agents.core.actors import LLM
from rh_agents.errors import ConfigurationError, RateLimitedError, RHAgentsError
from rh_agents.resilience.checks import is_seconds
from rh_agents.resilience.signals import retry_after_of

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = [
    "ChatMessage",
    "ChatReply",
    "ChatRequest",
    "MalformedCompletionError",
    "OpenAIChat",
    "openai_llm",
]


class MalformedCompletionError(RHAgentsError, ValueError):
    """The server answered, but not with a chat completion (a proxy's HTML page, a body that
    is not JSON, a completion without choices)."""


class ChatMessage(BaseModel):
    role: str = "user"
    content: str


class ChatRequest(BaseModel):
    """Either ``messages`` or a single user ``prompt`` (a ``system`` text is put first)."""

    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    system: str | None = None

    @model_validator(mode="after")
    def _needs_content(self) -> ChatRequest:
        if not self.messages and self.prompt is None:
            raise ValueError("a chat request needs 'messages' or a 'prompt'")
        return self

    def as_messages(self) -> list[Any]:
        out: list[Any] = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": m.role, "content": m.content} for m in self.messages]
        if self.prompt is not None:
            out.append({"role": "user", "content": self.prompt})
        return out


class ChatReply(BaseModel):
    content: str
    model: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise ConfigurationError(
            "the OpenAI integration needs the 'openai' package: pip install 'rh-agents[openai]'"
        ) from exc
    return openai


class OpenAIChat:
    """The handler of the actor: one ``AsyncOpenAI`` client per event loop, made on first use.

    Close it with ``await handler.aclose()`` when done (``openai_llm(...).handler``).
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self._openai = _import_openai()
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not self.api_key:
            raise ConfigurationError(
                "no OpenAI API key: pass api_key=... or set OPENAI_API_KEY "
                "(a local compatible server accepts any non-empty key)"
            )
        if not is_seconds(timeout):
            raise ConfigurationError(f"timeout must be seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client: AsyncOpenAI | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._making: asyncio.Future[AsyncOpenAI] | None = None

    async def client(self) -> AsyncOpenAI:
        """The client of the running loop (an httpx pool belongs to one loop; a new loop, a
        new test say, gets a new client). Made in a worker thread, once per loop: making one
        loads the TLS certificates, tens of milliseconds that would hold the event loop."""
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and self._loop is loop:
            return client
        making = self._making
        if (
            making is None
            or making.get_loop() is not loop
            or (making.done() and (making.cancelled() or making.exception() is not None))
        ):
            making = self._making = asyncio.ensure_future(asyncio.to_thread(self._new_client))
        client = await asyncio.shield(making)
        if self._making is making:
            self._client, self._loop, self._making = client, loop, None
        return client

    def _new_client(self) -> AsyncOpenAI:
        client: AsyncOpenAI = self._openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=0,
        )
        return client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __call__(self, input: ChatRequest, context: str, state: Any) -> ChatReply:
        openai = self._openai
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        try:
            client = await self.client()
            completion = await client.chat.completions.create(
                model=self.model, messages=input.as_messages(), **options
            )
        except openai.RateLimitError as exc:
            raise RateLimitedError(
                f"model {self.model!r} answered 429 (rate limited): {exc.message}",
                retry_after=retry_after_of(exc),
            ) from exc
        except openai.APITimeoutError as exc:
            raise TimeoutError(
                f"model {self.model!r} did not answer within {self.timeout}s"
            ) from exc
        except json.JSONDecodeError as exc:
            raise self._malformed(f"its body is not JSON ({exc})") from exc
        # openai builds its models without validating them (and hands back the text of a
        # reply that is not JSON): what the server sent is checked here, or a bad reply
        # would surface as an AttributeError or IndexError from this module.
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            what = (
                f"a {type(completion).__name__}: {str(completion)[:200]!r}"
                if isinstance(completion, str | bytes)
                else f"a completion with choices={choices!r}"
            )
            raise self._malformed(f"it is {what}")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise self._malformed("its first choice has no message")
        usage = getattr(completion, "usage", None)
        return ChatReply(
            content=message.content or "",
            model=completion.model,
            finish_reason=choice.finish_reason,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        )

    def _malformed(self, why: str) -> MalformedCompletionError:
        return MalformedCompletionError(
            f"model {self.model!r} at {self.base_url or 'the OpenAI API'} did not answer with a "
            f"chat completion: {why}"
        )


def openai_llm(
    name: str = "llm",
    *,
    model: str = "gpt-4o-mini",
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    temperature: float | None = None,
    max_tokens: int | None = None,
    description: str = "OpenAI-compatible chat completion",
    **actor_options: Any,
) -> LLM:
    """An ``LLM`` actor taking a ``ChatRequest`` and returning a ``ChatReply``.

    ``actor_options`` (``retry``, ``circuit_breaker``, ``cacheable``...) go to the actor.
    """
    handler = OpenAIChat(
        model=model,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    return LLM(
        name=name,
        description=description,
        input_model=ChatRequest,
        output_model=ChatReply,
        handler=handler,
        **actor_options,
    )
