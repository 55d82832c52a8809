"""``input_digest``: a short fingerprint of a call's validated input, kept with its checkpoint.

A resumed run replays a stored result only for a call whose input has the digest the
stored one had: a call that now gets another input at the same address (the program
changed, or calls started in another order and were numbered ``name``, ``name#2``...
the other way round) runs again instead of getting another call's result::

    digest = input_digest(Item(i=3))        # '5b1f...' (32 hex digits), the same in every process

Equal inputs must give one digest in every process, and different inputs different ones.
The text hashed is the input's JSON, made one of two ways, chosen once per input model:

- its serializer's (pydantic's own, with NaN and the infinities written as such, so that
  they differ from ``None``), about 1 us with the hash, for a model whose JSON has one text
  per value: fields of plainly ordered types only (strings, numbers, booleans, bytes,
  dates, UUIDs, enums, literals, lists and tuples of them, ``X | None``), no extra fields, no
  computed fields, no serializer of its own;
- the canonical JSON of ``codec.canonical_json`` (keys sorted, sets in order) of its
  ``model_dump``, about 8 us, for any other: a dict (whose order is that of insertion), a
  set (whose order follows string hashing, which varies from one process to the next),
  ``Any``, a union of types whose values may write as one JSON (``str | bytes``), extra or
  computed fields, custom serializers, a field holding a model (which may
  be a subclass instance, whose own fields the declared model's serializer leaves out).

An input model with a secret field (``SecretStr``, ``SecretBytes``) has no digest: both
ways would write it masked, and different secrets would look the same. Nor has an input
that cannot be written as JSON. A call without a digest is matched by its address alone, as
before digests existed; so is every call when ``Recovery(match_inputs=False)``.
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
from typing import Any, Literal

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from rh_agents.recovery.codec import _serializer, canonical_json

__all__ = ["input_digest"]

_Kind = Literal["plain", "canonical", "secret"]  # (worst last)
_RANK: dict[_Kind, int] = {"plain": 0, "canonical": 1, "secret": 2}

# Per input model, what makes its JSON (see the module docstring); None: no digest.
_MAKERS: dict[type[BaseModel], Callable[[BaseModel], bytes] | None] = {}
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
_SECRETS: tuple[type, ...] = tuple(
    cls
    for cls in (
        getattr(pydantic, "SecretStr", None),
        getattr(pydantic, "SecretBytes", None),
        getattr(pydantic, "Secret", None),
    )
    if isinstance(cls, type)
)
# (get_origin gives the collections.abc class for typing's aliases too.)
_SEQUENCES = {list, tuple, abc.Sequence, abc.MutableSequence}


def input_digest(validated: BaseModel) -> str | None:
    """The digest of ``validated`` (an actor's input model instance); ``None`` if it has
    none (see the module docstring)."""
    cls = type(validated)
    try:
        maker = _MAKERS[cls]
    except KeyError:
        maker = _MAKERS[cls] = _maker(cls)
    if maker is None:
        return None
    try:
        text = maker(validated)
    except (PydanticSerializationError, TypeError, ValueError):
        return None
    return _blake2b(text, digest_size=16).hexdigest()


def _maker(cls: type[BaseModel]) -> Callable[[BaseModel], bytes] | None:
    kind = _model_kind(cls, {cls})
    if kind == "secret":
        return None
    if kind == "canonical":
        return _canonical_bytes
    serializer = _serializer(cls)
    return serializer.to_json


def _model_kind(cls: type[BaseModel], seen: set[type]) -> _Kind:
    """How an input model's instances can be written for a digest: its fields' worst, or
    canonical for extra fields, computed fields and serializers of its own."""
    fields = _worst(_kind(field.annotation, seen) for field in cls.model_fields.values())
    if fields != "plain":
        return fields
    decorators = cls.__pydantic_decorators__
    if (
        cls.model_config.get("extra") == "allow"
        or cls.model_computed_fields
        or decorators.field_serializers
        or decorators.model_serializers
    ):
        return "canonical"
    return "plain"


def _canonical_bytes(validated: BaseModel) -> bytes:
    try:
        value: Any = validated.model_dump(mode="python", serialize_as_any=True)
    except TypeError:  # (an older pydantic)
        value = validated
    return canonical_json(value).encode()


def _worst(kinds: typing.Iterable[_Kind]) -> _Kind:
    worst: _Kind = "plain"
    for kind in kinds:
        if _RANK[kind] > _RANK[worst]:
            worst = kind
            if kind == "secret":
                break
    return worst


def _kind(annotation: Any, seen: set[type]) -> _Kind:
    """How values of a field annotated ``annotation`` can be written (see the module
    docstring)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        if not isinstance(annotation, type):
            return "canonical"  # Any, a TypeVar, a forward reference not resolved
        if _SECRETS and issubclass(annotation, _SECRETS):
            return "secret"
        if issubclass(annotation, BaseModel):
            # Canonical: it may hold an instance of a subclass, whose own fields the model's
            # serializer would leave out (and a secret in it is still one). ``seen``: the
            # models being looked at, for a model that holds itself.
            if annotation in seen:
                return "canonical"
            seen.add(annotation)
            return "secret" if _model_kind(annotation, seen) == "secret" else "canonical"
        return "plain" if issubclass(annotation, _ATOMS) else "canonical"
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _kind(args[0], seen)
    if origin is Literal:
        return "plain"
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if len(members) > 1:
            # Its members may write as one JSON (b"abc" and "abc", a datetime and its ISO
            # text, 1 and 1.0 in int | float...): the canonical form tells them apart.
            return "secret" if _worst(_kind(arg, seen) for arg in args) == "secret" else "canonical"
        return _worst(_kind(arg, seen) for arg in args)
    if origin in _SEQUENCES:
        return _worst(_kind(arg, seen) for arg in args if arg is not Ellipsis)
    # A dict (written in its insertion order), a set, a mapping, anything else: canonical,
    # unless a secret is in there.
    return "secret" if _worst(_kind(arg, seen) for arg in args) == "secret" else "canonical"
