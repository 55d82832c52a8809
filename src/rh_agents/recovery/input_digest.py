"""``input_digest``: a short fingerprint of a call's validated input, kept with its checkpoint.

A resumed run replays a stored result only for a call whose input has the digest the
stored one had: a call that now gets another input at the same address (the program
changed, or calls started in another order and were numbered ``name``, ``name#2``...
the other way round) runs again instead of getting another call's result::

    digest = input_digest(Item(i=3))        # '5b1f...' (32 hex digits), the same in every process

The text hashed is the input's JSON. For a model whose fields are all of plainly ordered
types (strings, numbers, lists, tuples, dicts with string keys, other such models: checked
once per class) that is what pydantic's own serializer writes (``model_dump_json``'s text;
about 1 us with the hash); for one that may hold a set, a dict with other keys or ``Any``,
whose JSON would vary from one process to the next (a set's order follows string hashing),
it is the canonical JSON of ``codec.canonical_json`` (about 8 us). An input that has no JSON
at all has no digest (``None``), and its call is then matched without one, as before
digests existed.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import types
import typing
import uuid
from collections import abc
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from rh_agents.recovery.codec import canonical_json

__all__ = ["input_digest"]

# Per input model, what makes its JSON: its own serializer (model_dump_json's, called
# directly: a third of the time) when that gives one text per value in every process, else
# the canonical form (see the module docstring).
_SERIALIZERS: dict[type[BaseModel], Callable[[BaseModel], bytes]] = {}
_blake2b = hashlib.blake2b

_ATOMS: tuple[type, ...] = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    enum.Enum,
)
# (get_origin gives the collections.abc class for typing's aliases too.)
_SEQUENCES = {list, tuple, abc.Sequence, abc.MutableSequence}
_MAPPINGS = {dict, abc.Mapping, abc.MutableMapping}


def input_digest(validated: BaseModel) -> str | None:
    """The digest of ``validated`` (an actor's input model instance); ``None`` if it has no
    JSON."""
    cls = type(validated)
    serializer = _SERIALIZERS.get(cls)
    if serializer is None:
        serializer = _SERIALIZERS[cls] = (
            cls.__pydantic_serializer__.to_json if _ordered(cls, set()) else _canonical_bytes
        )
    try:
        text = serializer(validated)
    except (PydanticSerializationError, TypeError, ValueError):
        return None
    return _blake2b(text, digest_size=16).hexdigest()


def _canonical_bytes(validated: BaseModel) -> bytes:
    return canonical_json(validated).encode()


def _ordered(annotation: Any, seen: set[type]) -> bool:
    """Whether values of ``annotation`` always serialise to one JSON text."""
    origin = typing.get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type):
            if issubclass(annotation, BaseModel):
                if annotation in seen:
                    return True  # (a recursive model: its fields are being checked)
                seen.add(annotation)
                return all(_ordered(f.annotation, seen) for f in annotation.model_fields.values())
            return issubclass(annotation, _ATOMS)
        return False  # Any, a TypeVar, a forward reference not resolved: not known
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _ordered(args[0], seen)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_ordered(arg, seen) for arg in args)
    if origin in _SEQUENCES:
        return all(_ordered(arg, seen) for arg in args if arg is not Ellipsis)
    if origin in _MAPPINGS:
        return len(args) == 2 and args[0] is str and _ordered(args[1], seen)
    return False  # a set, a frozenset, anything else: the canonical form
