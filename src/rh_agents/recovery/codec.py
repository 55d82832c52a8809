"""Results to JSON and back, through pydantic (never pickle).

::

    text, model = encode_result(Summary(text="hi"))   # ('{"text":"hi"}', 'Summary')
    value = decode_result(record, actor)                # a Summary again, via output_model

An actor with an ``output_model`` gets its results back as instances of that model. Without
one, results come back as plain JSON values (dicts, lists, strings, numbers): declare an
``output_model`` to get typed results after a resume.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from rh_agents.core.actors import BaseActor
from rh_agents.errors import CorruptStateError, ResultSchemaError
from rh_agents.recovery.records import CheckpointRecord

__all__ = ["canonical_json", "decode_result", "encode_result"]


def encode_result(value: Any) -> tuple[str | None, str]:
    """``(json_text, type_name)``; ``json_text`` is ``None`` if the value cannot be serialised."""
    name = type(value).__name__
    try:
        if isinstance(value, BaseModel):
            # The model's own serializer, without model_dump_json's keyword handling.
            return value.__pydantic_serializer__.to_json(value).decode(), name
        return pydantic_core.to_json(value).decode(), name
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        return None, name


def decode_result(record: CheckpointRecord, actor: BaseActor) -> Any:
    """The stored value of ``record``, typed by ``actor.output_model`` when it has one."""
    text = record.result_json
    if text is None:
        raise CorruptStateError(f"checkpoint at {record.address} holds no result")
    model = actor.output_model
    if model is not None:
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            raise ResultSchemaError(
                f"the stored result at {record.address} (actor {actor.name!r}, stored as "
                f"{record.output_model}) no longer fits {model.__name__}: "
                f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}. Bump the "
                "actor's version to run it again, or resume from an earlier address."
            ) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CorruptStateError(
            f"the stored result at {record.address} is not valid JSON ({exc})"
        ) from exc


def canonical_json(value: Any) -> str:
    """One text per value: keys sorted, no spaces (pydantic models by their JSON dump)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    else:
        value = pydantic_core.to_jsonable_python(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
