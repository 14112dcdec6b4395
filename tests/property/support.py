"""What the property suites share: hypothesis settings that reproduce in CI, the error shape
every 4xx must have, Authorization headers good and bad, httpx request kwargs from a
schemathesis case, and protobuf messages and encodings with arbitrary contents (no I/O)."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import httpx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from basalt import apikeys

# derandomize: the same examples on every run and machine, so a red CI run reproduces here.
# The fixtures are module-scoped servers, shared by every example on purpose.
FUZZ = settings(
    deadline=None,
    derandomize=True,
    max_examples=30,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
# Requests without a valid key all end at the auth middleware: a few examples show it.
FUZZ_NO_KEY = settings(FUZZ, max_examples=10)


def error_of(r: httpx.Response) -> dict[str, Any]:
    """The `error` object of an error answer, asserting the shape the router and the control
    plane share (OpenAI's): {"error": {"message": str, "type": str, "param": ..., "code": ...}}."""
    assert r.headers.get("content-type", "").startswith("application/json"), (
        f"{r.status_code} is not JSON: {r.headers.get('content-type')!r} {r.text[:300]!r}")
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"{r.status_code}: {r.text[:300]}"
    error = body["error"]
    assert isinstance(error, dict), r.text[:300]
    assert isinstance(error.get("message"), str) and error["message"], r.text[:300]
    assert isinstance(error.get("type"), str) and error["type"], r.text[:300]
    assert "param" in error and "code" in error, r.text[:300]
    return error


# NATS KV's rule for keys (nats-py refuses others with InvalidKeyError before any I/O).
_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def not_a_kv_key(key: str) -> bool:
    return not _KV_KEY.fullmatch(key) or key.startswith(".") or key.endswith(".")


def request_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """httpx.AsyncClient.request kwargs from a case's `as_transport_kwargs()` (requests
    style). JSON bodies are encoded here with escapes, so lone surrogates and other odd
    strings schemathesis generates travel as valid JSON text and reach the server."""
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items()
               if k.lower() not in ("connection", "accept-encoding")}
    out: dict[str, Any] = {"method": kwargs["method"], "url": kwargs["url"],
                           "params": kwargs.get("params") or None}
    if "json" in kwargs:
        out["content"] = json.dumps(kwargs["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content"] = data if isinstance(data, bytes) else str(data).encode()
    out["headers"] = headers
    return out


def _printable(min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(string.ascii_letters + string.digits + string.punctuation + " ",
                   min_size=min_size, max_size=60)


def good_auth(key: str) -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from([f"Bearer {key}", f"Api-Key {key}", f"bearer  {key} "]).map(
        lambda v: {"Authorization": v})


def bad_auth(key: str, wrong_scope_key: str) -> st.SearchStrategy[dict[str, str]]:
    """No header, an empty one, and keys that are malformed, unknown, of the wrong secret, or
    valid but of the other scope (`wrong_scope_key`)."""
    key_id = key[len(apikeys.PREFIX):].split(".", 1)[0]
    hex12 = st.text("0123456789abcdef", min_size=12, max_size=12)
    values = st.one_of(
        st.just(""),
        _printable(),
        st.builds(lambda s: f"Bearer {s}", _printable(1)),
        st.builds(lambda i, s: f"Bearer bsk_{i}.{s}", hex12, _printable(1)),
        st.builds(lambda s: f"Api-Key bsk_{key_id}.{s}", _printable(1)),
        st.just(f"Basic {key}"),
        st.just(key),  # no scheme
        st.just(f"Bearer {wrong_scope_key}"),
    )
    return st.one_of(st.just({}), values.map(lambda v: {"Authorization": v}))


# -- protobuf messages with arbitrary field values ----------------------------------------

_F = FieldDescriptor
_INT_RANGES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1), _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), _F.TYPE_ENUM: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1), _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1), _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1), _F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if f.type in _INT_RANGES:
        lo, hi = _INT_RANGES[f.type]
        # Small values and the edges of the wire type; enums: known and unknown numbers.
        return st.one_of(st.integers(-3, 3).filter(lambda v: lo <= v <= hi),
                         st.integers(lo, hi), st.sampled_from([lo, hi]))
    if f.type == _F.TYPE_BOOL:
        return st.booleans()
    if f.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return st.floats(width=32 if f.type == _F.TYPE_FLOAT else 64)  # NaN and inf too
    if f.type == _F.TYPE_STRING:
        return st.text(max_size=24)
    return st.binary(max_size=24)


def messages(cls: type[Message], depth: int = 2,
             fields: dict[str, st.SearchStrategy[Any]] | None = None) -> st.SearchStrategy[Any]:
    """Messages of `cls` with any value in any field: unknown enum numbers, NaN, the ends of
    each integer type, empty and odd strings, nested messages to `depth`. `fields` replaces
    the strategy of named fields (to aim a message at a registered replica, say)."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in cls.DESCRIPTOR.fields:
        if fields and f.name in fields:
            parts[f.name] = fields[f.name]
            continue
        entry = f.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            if value.message_type is not None:
                continue  # no map of messages in our contracts
            parts[f.name] = st.dictionaries(_scalar(key), _scalar(value), max_size=3)
            continue
        if entry is not None:
            if depth == 0:
                continue
            one: st.SearchStrategy[Any] = messages(GetMessageClass(entry), depth - 1)
        else:
            one = _scalar(f)
        parts[f.name] = st.lists(one, max_size=4) if f.is_repeated else one
    return st.fixed_dictionaries({}, optional=parts).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target.update(value)
        elif f.is_repeated:
            target.extend(value)
        elif f.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def wire(cls: type[Message], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """What a consumer of `cls` may be handed: arbitrary bytes, a valid encoding of a message
    with arbitrary values, or such an encoding cut short or with a byte changed."""
    encoded = messages(cls, fields=fields or None).map(lambda m: m.SerializeToString())

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        raw = bytearray(draw(encoded))
        if not raw:
            return bytes(raw)
        i = draw(st.integers(0, len(raw) - 1))
        if draw(st.booleans()):
            return bytes(raw[:i])
        raw[i] = draw(st.integers(0, 255))
        return bytes(raw)

    return st.one_of(st.binary(max_size=160), encoded, damaged())
