"""How values are stored: plain JSON where exact, a serializer (pickle by default) for the rest.

Every stored value is a pair ``(encoding, data)``. ``TEXT`` keeps a ``str`` as it is, ``JSON`` holds a
JSON document, ``PICKLED`` holds the serializer's bytes. A value is JSON only if it round-trips exactly:
a tuple, a set, an int subclass or a dict with non-string keys goes to the serializer instead.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

from .errors import RecordedError, SerializationError

TEXT = 0
JSON = 1
PICKLED = 2

_SCALARS = (str, int, float, bool, type(None))
_json_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Serializer(Protocol):
    """Turns a non-JSON value into bytes and back (pickle by default)."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    """The default serializer: pickle at the highest protocol."""

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def is_exact_json(value: Any) -> bool:
    """True when ``value`` survives a JSON round trip unchanged, types included."""
    kind = type(value)
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if kind in _SCALARS:
        return True
    if kind is list:
        return all(is_exact_json(item) for item in value)
    if kind is dict:
        return all(type(k) is str and is_exact_json(v) for k, v in value.items())
    return False


class Codec:
    """Encodes and decodes stored values with one serializer."""

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.serializer: Serializer = serializer or PickleSerializer()

    def encode(self, value: Any) -> tuple[int, str | bytes]:
        """Return ``(encoding, data)``; raise SerializationError naming the type if impossible."""
        kind = type(value)
        if kind is str:
            return TEXT, value
        if kind is int:
            return JSON, str(value)
        if is_exact_json(value):
            return JSON, _json_encoder.encode(value)
        try:
            return PICKLED, self.serializer.dumps(value)
        except Exception as exc:
            culprit = self._culprit(value)
            where = "" if culprit is value else f" (inside a {type(value).__qualname__})"
            raise SerializationError(
                f"cannot store a value of type {type(culprit).__qualname__}{where}: {exc}"
            ) from exc

    def _culprit(self, value: Any, seen: frozenset[int] = frozenset()) -> Any:
        """The innermost item of a list, tuple, set or dict that the serializer rejects (or ``value``)."""
        if id(value) in seen:
            return value
        seen = seen | {id(value)}
        if isinstance(value, dict):
            items: list[Any] = [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
        else:
            return value
        for item in items:
            try:
                self.serializer.dumps(item)
            except Exception:
                return self._culprit(item, seen)
        return value

    def decode(self, encoding: int, data: Any, *, unpickle: bool = True) -> Any:
        """Return the stored value; with ``unpickle=False`` a pickled value becomes a placeholder."""
        if encoding == TEXT:
            return data
        if encoding == JSON:
            if data.isdigit() and data.isascii():  # a non-negative int, as ``encode`` writes it
                return int(data)
            return json.loads(data)
        if not unpickle:
            return Pickled(bytes(data))
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            raise SerializationError(f"cannot decode a stored value: {exc}") from exc

    def encode_error(self, exc: BaseException) -> tuple[str, bytes | None]:
        """Return a readable JSON description of ``exc`` and, when possible, its pickled form."""
        description = _json_encoder.encode(
            {
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": _storable_text(str(exc)),
                "traceback": _storable_text(_format_traceback(exc)),
            }
        )
        try:
            pickled = self.serializer.dumps(exc)
            self.serializer.loads(pickled)
        except Exception:
            pickled = None
        return description, pickled

    def decode_error(self, description: str, pickled: bytes | None) -> BaseException:
        """Rebuild a recorded exception: the original type if possible, else RecordedError."""
        if pickled is not None:
            try:
                restored = self.serializer.loads(pickled)
                if isinstance(restored, BaseException):
                    return restored
            except Exception:
                pass
        info = json.loads(description)
        return RecordedError(info.get("type", "Exception"), info.get("message", ""))


class Pickled:
    """Stands in for a pickled value that the caller chose not to unpickle."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def type_name(self) -> str:
        """The pickled object's class, read from the pickle without running it."""
        return pickled_type_name(self.data)

    def __repr__(self) -> str:
        return f"<pickled {self.type_name}>"


def pickled_type_name(data: bytes) -> str:
    """Best-effort name of the top-level class in a pickle, found without unpickling it."""
    import pickletools

    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if opcode.name == "STACK_GLOBAL":
                break
        strings = [
            arg
            for opcode, arg, _ in pickletools.genops(data)
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str)
        ]
        if len(strings) >= 2:
            return f"{strings[0]}.{strings[1]}"
        return _builtin_pickled_type(data)
    except Exception:
        return "object"


def _builtin_pickled_type(data: bytes) -> str:
    import pickletools

    for opcode, _, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            return "tuple"
        if name in ("EMPTY_SET", "FROZENSET"):
            return "set" if name == "EMPTY_SET" else "frozenset"
        if name in ("EMPTY_DICT",):
            return "dict"
        if name in ("EMPTY_LIST",):
            return "list"
        if name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            return "bytes"
        if name == "BYTEARRAY8":
            return "bytearray"
    return "object"


def _format_traceback(exc: BaseException) -> str:
    import traceback  # only when an error is recorded: a slow import for a rare path

    return "".join(traceback.format_exception(exc))[-4000:]


def _storable_text(text: str) -> str:
    """``text`` with any lone surrogate (a file name that was not UTF-8, say) written as ``\\udcff``:
    a database stores only valid UTF-8, and an error must be recorded whatever its message holds."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
