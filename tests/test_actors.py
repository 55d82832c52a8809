"""Actors: construction, the decorators, and the errors that name what was wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import LLM, Agent, BaseActor, Tool, agent, llm, tool
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import (
    ActorDefinitionError,
    ActorInputError,
    ActorOutputError,
    RHAgentsError,
)


class Doc(BaseModel):
    text: str


class Page(BaseModel):
    text: str
    number: int = 1


class Summary(BaseModel):
    text: str
    words: int


async def summarize(input: Doc, context: str, state: ExecutionState) -> str:
    """First words of the document."""
    return input.text[:10]


def blocking(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kind"), [(Agent, "agent"), (Tool, "tool"), (LLM, "llm")])
def test_actor_classes_keep_their_fields_and_kind(cls: type[BaseActor], kind: str) -> None:
    actor = cls(name="summarize", description="d", input_model=Doc, handler=summarize)
    assert actor.kind == kind
    assert actor.name == "summarize"
    assert actor.description == "d"
    assert actor.input_model is Doc
    assert actor.output_model is None
    assert actor.handler is summarize
    assert actor.cacheable is False
    assert actor.version == "1"


def test_actors_are_frozen_and_hashable() -> None:
    actor = Tool(name="t", input_model=Doc, handler=summarize, metadata={"a": 1})
    with pytest.raises(ValueError, match="frozen"):
        actor.name = "other"  # type: ignore[misc]
    same = Tool(name="t", input_model=Doc, handler=summarize, metadata={"a": 1})
    assert hash(actor) == hash(same)
    assert {actor: 1}[same] == 1


def test_async_callable_object_is_accepted_as_handler() -> None:
    class Handler:
        async def __call__(self, input: Doc, context: str, state: Any) -> str:
            return input.text

    actor = Tool(name="obj", input_model=Doc, handler=Handler())
    assert actor.name == "obj"


# --- decorators -------------------------------------------------------------------------------


@pytest.mark.parametrize(("decorator", "cls"), [(agent, Agent), (tool, Tool), (llm, LLM)])
def test_bare_decorator_infers_name_description_and_input_model(
    decorator: Any, cls: type[BaseActor]
) -> None:
    actor = decorator(summarize)
    assert type(actor) is cls
    assert actor.name == "summarize"
    assert actor.description == "First words of the document."
    assert actor.input_model is Doc
    assert actor.handler is summarize


def test_decorator_with_options() -> None:
    @tool(name="count", description="Count words", output_model=Summary, cacheable=True)
    async def count_words(input: Page, context: str, state: ExecutionState) -> Summary:
        return Summary(text=input.text, words=len(input.text.split()))

    assert isinstance(count_words, Tool)
    assert count_words.name == "count"
    assert count_words.description == "Count words"
    assert count_words.input_model is Page
    assert count_words.output_model is Summary
    assert count_words.cacheable is True


def test_decorator_explicit_input_model_wins_over_annotation() -> None:
    @agent(input_model=Page)
    async def reader(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text

    assert reader.input_model is Page


def test_decorator_without_model_annotation_names_the_fix() -> None:
    with pytest.raises(ActorDefinitionError, match=r"'untyped'.*input_model") as info:

        @tool
        async def untyped(input, context, state):  # type: ignore[no-untyped-def]
            return input

    assert "first parameter" in str(info.value)


def test_decorator_on_a_plain_function_makes_an_actor_run_in_a_thread() -> None:
    made = tool(blocking)
    assert made.input_model is Doc and made.runs_in_thread
    assert not Tool(name="s", input_model=Doc, handler=summarize).runs_in_thread


# --- definition errors ----------------------------------------------------------------------


def test_a_plain_function_handler_is_accepted_and_runs_in_a_thread() -> None:
    actor = Tool(name="b", input_model=Doc, handler=blocking)
    assert actor.handler is blocking and actor.runs_in_thread
    assert "runs_in_thread" not in actor.model_dump()  # not a field: derived from the handler


def test_missing_input_model_is_rejected() -> None:
    with pytest.raises(ActorDefinitionError, match=r"'nomodel' has no input_model"):
        Tool(name="nomodel", handler=summarize)  # type: ignore[call-arg]


@pytest.mark.parametrize("model", [dict, int, "Doc", Doc(text="x")])
def test_input_model_must_be_a_basemodel_subclass(model: Any) -> None:
    with pytest.raises(ActorDefinitionError, match="input_model must be a pydantic BaseModel"):
        Tool(name="t", input_model=model, handler=summarize)


def test_output_model_must_be_a_basemodel_subclass_or_none() -> None:
    with pytest.raises(ActorDefinitionError, match="output_model must be"):
        Tool(name="t", input_model=Doc, output_model=str, handler=summarize)  # type: ignore[arg-type]


def test_missing_or_non_callable_handler_is_rejected() -> None:
    with pytest.raises(ActorDefinitionError, match="needs a handler"):
        Tool(name="t", input_model=Doc)  # type: ignore[call-arg]
    with pytest.raises(ActorDefinitionError, match="needs a handler"):
        Tool(name="t", input_model=Doc, handler="not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["a::b", "docs[3]", "x#2", "two\nlines", "", "   ", ":lead", "trail:", "a:::b"]
)
def test_bad_names_are_rejected_with_a_library_error(name: str) -> None:
    with pytest.raises(ActorDefinitionError, match="name") as info:
        Tool(name=name, input_model=Doc, handler=summarize)
    assert isinstance(info.value, RHAgentsError)
    message = str(info.value)
    assert f"actor name {name!r} is not allowed" in message
    assert "without '::', '[', ']', '#', a newline, or a ':' at either end" in message


def test_single_colon_in_a_name_is_fine() -> None:
    assert Tool(name="ns:tool", input_model=Doc, handler=summarize).name == "ns:tool"


@pytest.mark.parametrize("cls", [Agent, Tool, LLM])
def test_an_unknown_keyword_is_an_error_naming_it(cls: type[BaseActor]) -> None:
    with pytest.raises(ActorDefinitionError) as info:
        cls(name="t", input_model=Doc, handler=summarize, cachable=True, colour="red")
    assert str(info.value) == (
        "actor 't': unknown options 'cachable' (did you mean 'cacheable'?), 'colour'; "
        "the options are: name, description, input_model, output_model, handler, cacheable, "
        "version, retry, circuit_breaker, metadata"
    )


@pytest.mark.parametrize("decorator", [agent, tool, llm])
def test_a_decorator_refuses_an_unknown_keyword(decorator: Any) -> None:
    with pytest.raises(ActorDefinitionError, match=r"actor 'f': unknown option 'verison'"):

        @decorator(verison="2")
        async def f(input: Doc, context: str, state: ExecutionState) -> str:
            return input.text


# --- input and output validation --------------------------------------------------------------


def test_validate_input_accepts_the_model_a_dict_or_a_compatible_model() -> None:
    actor = Tool(name="reader", input_model=Doc, handler=summarize)
    doc = Doc(text="hello")
    assert actor.validate_input(doc) is doc
    from_dict = actor.validate_input({"text": "hi"})
    assert isinstance(from_dict, Doc) and from_dict.text == "hi"
    from_other = actor.validate_input(Page(text="page", number=3))
    assert type(from_other) is Doc and from_other.text == "page"


def test_validate_input_error_names_actor_model_and_field() -> None:
    actor = Tool(name="reader", input_model=Page, handler=summarize)
    with pytest.raises(ActorInputError) as info:
        actor.validate_input({"text": "x", "number": "many"})
    message = str(info.value)
    assert "tool 'reader'" in message
    assert "Page" in message
    assert "number" in message


def test_validate_input_missing_field_and_wrong_type() -> None:
    actor = Agent(name="reader", input_model=Doc, handler=summarize)
    with pytest.raises(ActorInputError, match=r"agent 'reader'.*text: Field required"):
        actor.validate_input({})
    with pytest.raises(ActorInputError, match=r"agent 'reader'.*Doc"):
        actor.validate_input("just a string")
    with pytest.raises(ActorInputError, match="text"):
        actor.validate_input({"text": 3})


def test_validate_output_without_output_model_passes_anything() -> None:
    actor = Tool(name="t", input_model=Doc, handler=summarize)
    value = object()
    assert actor.validate_output(value) is value


def test_validate_output_converts_dicts_and_rejects_bad_values() -> None:
    actor = LLM(name="writer", input_model=Doc, output_model=Summary, handler=summarize)
    out = actor.validate_output({"text": "t", "words": "2"})
    assert out == Summary(text="t", words=2)
    same = Summary(text="a", words=1)
    assert actor.validate_output(same) is same
    with pytest.raises(ActorOutputError) as info:
        actor.validate_output({"text": "t"})
    message = str(info.value)
    assert "llm 'writer'" in message and "Summary" in message and "words" in message
    with pytest.raises(ActorOutputError, match="Summary"):
        actor.validate_output("plain text")


def test_any_other_bad_field_is_an_actor_definition_error() -> None:
    with pytest.raises(ActorDefinitionError, match=r"actor 't': cacheable: Input should be"):
        Tool(name="t", input_model=Doc, handler=summarize, cacheable="maybe")  # type: ignore[arg-type]


def test_an_async_generator_handler_is_refused_at_definition() -> None:
    # It was taken for a plain function (not a coroutine function), run in a thread, and
    # "completed" with the generator object as its result, its body never run.
    class Query(BaseModel):
        text: str

    async def stream_answer(input: Query, context: str, state: Any) -> AsyncIterator[str]:
        for word in input.text.split():
            yield word

    with pytest.raises(ActorDefinitionError, match="async generator"):
        Tool(name="stream", input_model=Query, handler=stream_answer)
    with pytest.raises(ActorDefinitionError, match="async generator"):
        tool(input_model=Query)(stream_answer)
