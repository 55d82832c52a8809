"""Results to JSON and back, through pydantic (never pickle), exactly or not at all.

::

    text, model = encode_result(Summary(text="hi"), Summary)   # ('{"text":"hi"}', 'Summary')
    value = decode_result(record, actor)                        # a Summary again, via output_model

An actor with an ``output_model`` gets its results back as instances of that model. Without
one, a result is stored only if it is plain JSON (``dict`` with ``str`` keys, ``list``,
``str``, ``int``, ``float``, ``bool``, ``None``), since that is what comes back.

Values round-trip exactly: NaN and the infinities are written as the JSON constants ``NaN``,
``Infinity`` and ``-Infinity`` (which both JSON readers used here accept), whatever the
model's ``ser_json_inf_nan`` says. A value that would not come back equal is not stored at all
(``encode_checked`` says why): an iterator or a generator (never even read, so the caller gets
it untouched), anything pydantic cannot serialise, and a value whose decoded copy differs (a
tuple or a set that would come back a list, a dataclass that would come back a dict).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, Final

import pydantic_core
from pydantic import BaseModel, ValidationError
from pydantic_core import CoreConfig, SchemaSerializer

from rh_agents.core.actors import BaseActor
from rh_agents.errors import CorruptStateError, ResultSchemaError
from rh_agents.recovery.records import CheckpointRecord

__all__ = ["Encoded", "canonical_json", "decode_result", "encode_checked", "encode_result"]

_SCALARS = frozenset({str, int, float, bool, type(None)})
# JSON constants for NaN and the infinities, whatever a model's own config says.
_CONSTANTS: Final = "constants"
_MAX_DEPTH = 200  # deeper than this, a value is refused rather than walked


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """What ``encode_checked`` made of a value: ``text`` is ``None`` when it is not stored,
    and ``problem`` then says why (``"a generator"``, ``"it would come back as ..."``)."""

    text: str | None
    type_name: str
    problem: str | None = None


def encode_result(value: Any, model: type[BaseModel] | None = None) -> tuple[str | None, str]:
    """``(json_text, type_name)``; ``json_text`` is ``None`` if the value cannot be stored
    faithfully. ``model`` is the class the text will be decoded with (an actor's
    ``output_model``); ``None`` means plain JSON (see the module docstring)."""
    encoded = encode_checked(value, model)
    return encoded.text, encoded.type_name


def encode_checked(value: Any, model: type[BaseModel] | None = None) -> Encoded:
    """The JSON text of ``value`` if decoding it gives an equal value back, else why not.

    An iterator is refused before anything reads it. Then the text is made and, for a model,
    decoded again and compared field by field (NaN equal to NaN, types exact).
    """
    name = type(value).__name__
    if model is None:
        problem = _not_plain(value)
        if problem is not None:
            return Encoded(None, name, problem)
        try:
            text = pydantic_core.to_json(value, inf_nan_mode=_CONSTANTS).decode()
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            return Encoded(None, name, f"it cannot be serialised ({exc})")
        return Encoded(text, name)
    if type(value) is not model:
        return Encoded(None, name, f"it is not a {model.__name__}, the output model")
    try:
        if _holds_iterator(value):
            return Encoded(None, name, "it holds an iterator or a generator")
        text = _serializer(model).to_json(value).decode()
        copy = model.__pydantic_validator__.validate_json(text)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        # (a ValidationError is a ValueError: the model does not read back its own JSON)
        return Encoded(None, name, f"it cannot be serialised and read back ({exc})")
    try:
        same = _same(copy, value)
    except RecursionError:
        same = False
    if not same:
        return Encoded(None, name, f"it would not come back equal from its JSON: {text[:200]}")
    return Encoded(text, name)


def decode_result(record: CheckpointRecord, actor: BaseActor, store: str = "the store") -> Any:
    """The stored value of ``record``, typed by ``actor.output_model`` when it has one.

    Text that is not JSON is a damaged store (``CorruptStateError``); JSON that does not fit
    the model is a result written by another version of it (``ResultSchemaError``). ``store``
    names the store in the message."""
    text = record.result_json
    if text is None:
        raise CorruptStateError(
            f"the checkpoint at {record.address} in {store} holds no result; restore the store "
            "from a copy, or resume from an earlier address to run that call again"
        )
    model = actor.output_model
    if model is not None:
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            errors = exc.errors()
            if any(error["type"] == "json_invalid" for error in errors):
                raise _not_json(record, store, errors[0]["msg"]) from exc
            raise ResultSchemaError(
                f"the stored result at {record.address} (actor {actor.name!r}, stored as "
                f"{record.output_model}) no longer fits {model.__name__}: "
                f"{exc.error_count()} error(s), first: {errors[0]['msg']}. Bump the "
                "actor's version to run it again, or resume from an earlier address."
            ) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _not_json(record, store, str(exc)) from exc


def _not_json(record: CheckpointRecord, store: str, problem: str) -> CorruptStateError:
    # Damage (a truncated write, an edit by hand), not a changed model: bumping the actor's
    # version, which a ResultSchemaError advises, would not help.
    return CorruptStateError(
        f"the stored result at {record.address} in {store} is damaged: it is not valid JSON "
        f"({problem}); nothing was changed. Restore the store from a copy, or resume from an "
        "earlier address to run that call again."
    )


def canonical_json(value: Any) -> str:
    """One text per value, and one value per text: keys sorted, no spaces.

    A pydantic model is read through its own serializers (``model_dump``); a set is written
    with its members in order (``{"<set>": [...]}``: a set has none of its own, so the same
    set would give texts that vary with hashing, from one process to the next), a dict
    whose keys are not all strings as its sorted ``[key, value]`` pairs (``{"<map>": ...}``:
    JSON would make ``1`` and ``"1"`` one key), a tuple and any value JSON has no type for
    (bytes, a datetime, a UUID, a Decimal, an enum) tagged with its type
    (``{"<bytes>": "abc"}``), and a dict of its own with a key starting with ``<`` wrapped
    (``{"<dict>": {...}}``), so that no two values share a text. NaN and the infinities
    are kept as the constants ``NaN`` / ``Infinity`` (so an input holding NaN does not share
    its text, and a cache key, with one holding ``None``).
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    return _dumps(_canonical(value, 0))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any, depth: int) -> Any:
    """``value`` as plain JSON data in its one canonical form (see ``canonical_json``)."""
    if depth > _MAX_DEPTH:
        raise ValueError("the value is nested too deeply (or holds itself)")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="python"), depth + 1)
    if isinstance(value, dict):
        if all(type(key) is str for key in value):
            plain = {key: _canonical(item, depth + 1) for key, item in value.items()}
            # A dict of its own whose keys look like the tags below is wrapped in one: the
            # text of {"<set>": [1]} must not be that of the set {1}.
            return {"<dict>": plain} if any(key.startswith("<") for key in value) else plain
        pairs = [
            [_canonical(key, depth + 1), _canonical(item, depth + 1)] for key, item in value.items()
        ]
        pairs.sort(key=lambda pair: _dumps(pair[0]))
        return {"<map>": pairs}
    if isinstance(value, set | frozenset):
        members = [_canonical(item, depth + 1) for item in value]
        members.sort(key=_dumps)
        return {"<set>": members}
    if type(value) is list:
        return [_canonical(item, depth + 1) for item in value]
    if isinstance(value, list | tuple):  # (a tuple is not the list it holds: tagged)
        return {f"<{type(value).__qualname__}>": [_canonical(item, depth + 1) for item in value]}
    # Anything else (a datetime, a UUID, an enum, bytes...) as pydantic writes it in JSON,
    # tagged with its type: b"abc", a datetime and a UUID must not share the text of the
    # str pydantic writes them as.
    jsonable = pydantic_core.to_jsonable_python(value, inf_nan_mode=_CONSTANTS)
    return {f"<{type(value).__qualname__}>": _canonical(jsonable, depth + 1)}


# --- the model serializer that writes NaN as NaN -------------------------------------------

_SERIALIZERS: dict[type[BaseModel], SchemaSerializer] = {}


def _serializer(model: type[BaseModel]) -> SchemaSerializer:
    """``model``'s serializer with ``ser_json_inf_nan='constants'`` in every model it holds.

    Built once per class from the model's core schema. Should pydantic refuse (an older
    version, an exotic schema), the model's own serializer is used: its NaN then comes out as
    ``null``, the read-back check sees the difference and the value is not stored.
    """
    serializer = _SERIALIZERS.get(model)
    if serializer is None:
        try:
            schema = _with_constants(model.__pydantic_core_schema__)
            serializer = SchemaSerializer(
                schema,
                CoreConfig(ser_json_inf_nan=_CONSTANTS),
                _use_prebuilt=False,  # else nested models keep their own prebuilt serializers
            )
        except Exception:
            serializer = model.__pydantic_serializer__
        _SERIALIZERS[model] = serializer
    return serializer


def _with_constants(schema: Any) -> Any:
    """A copy of a core schema whose every ``config`` serialises NaN as ``NaN``."""
    if isinstance(schema, dict):
        copy = {key: _with_constants(item) for key, item in schema.items()}
        config = copy.get("config")
        if isinstance(config, dict):
            copy["config"] = {**config, "ser_json_inf_nan": _CONSTANTS}
        return copy
    if isinstance(schema, list):
        return [_with_constants(item) for item in schema]
    return schema


# --- what can be stored --------------------------------------------------------------------


def _not_plain(value: Any) -> str | None:
    """``None`` if ``value`` is plain JSON (types exact), else what is not."""
    try:
        bad = _first_not_plain(value)
    except RecursionError:
        return "it is nested too deeply (or holds itself)"
    if bad is None:
        return None
    what = _describe(bad)
    if bad is value:
        return f"{what} is not plain JSON (declare an output_model to store it)"
    return f"it holds {what}, which is not plain JSON (declare an output_model to store it)"


def _first_not_plain(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                bad = _first_not_plain(item)
                if bad is not None:
                    return bad
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return key
            if type(item) not in _SCALARS:
                bad = _first_not_plain(item)
                if bad is not None:
                    return bad
        return None
    return value


def _describe(value: Any) -> str:
    if isinstance(value, Iterator):
        kind = "a generator" if type(value).__name__ == "generator" else "an iterator"
        return f"{kind} ({type(value).__name__})"
    return f"a {type(value).__name__}"


def _holds_iterator(value: Any, depth: int = _MAX_DEPTH) -> bool:
    """Whether an iterator sits anywhere in ``value`` (models, dicts, lists, tuples, sets):
    serialising it would consume it."""
    kind = type(value)
    if kind in _SCALARS:
        return False
    if depth <= 0:
        raise RecursionError("value nested too deeply")
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__
        items: Any = value.__dict__.values() if not extra else [*value.__dict__.values(), *extra]
    elif isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return isinstance(value, Iterator)
    scalars = _SCALARS
    return any(type(item) not in scalars and _holds_iterator(item, depth - 1) for item in items)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and types exact (``1 == 1.0`` is not the same here)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        return bool(a == b) or (math.isnan(a) and math.isnan(b))
    if kind in _SCALARS:
        return bool(a == b)
    if isinstance(a, BaseModel):
        return _same_items(a.__dict__, b.__dict__) and _same(
            a.__pydantic_extra__, b.__pydantic_extra__
        )
    if isinstance(a, dict):
        return _same_items(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    try:
        return bool(a == b)
    except Exception:
        return False


def _same_items(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if x is y:
            continue
        kind = type(x)
        if kind is int or kind is str or kind is bool:  # the usual fields, inline
            if type(y) is not kind or x != y:
                return False
        elif not _same(x, y):
            return False
    return True
