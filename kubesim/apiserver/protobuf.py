"""Decoding application/vnd.kubernetes.protobuf request bodies (kubectl's typed clients send them).

The envelope is the magic "k8s\\x00" and a runtime.Unknown holding apiVersion/kind and the object's
bytes; field numbers come from protobuf_fields.json (see protobuf_fields.py). Responses stay JSON,
which those clients accept as well.
"""
from __future__ import annotations

import base64
import json
import os
import struct
from datetime import datetime, timezone
from functools import lru_cache

from .. import errors

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"
ZERO_TIME_SECONDS = -62135596800   # Go's zero time.Time; unset non-pointer timestamps travel as it or as 0
# Pointer fields whose zero/false differs from unset; other zero scalars are Go non-pointer fields that
# JSON would omit (omitempty), and non-pointer fields always travel in protobuf.
ZERO_IS_MEANINGFUL = {"replicas", "gracePeriodSeconds", "terminationGracePeriodSeconds", "orphanDependents",
                      "automountServiceAccountToken", "activeDeadlineSeconds", "tolerationSeconds",
                      "revisionHistoryLimit", "progressDeadlineSeconds", "runAsUser", "runAsGroup", "runAsNonRoot",
                      "readOnlyRootFilesystem", "allowPrivilegeEscalation", "privileged", "optional", "defaultMode",
                      "partition", "minReadySeconds", "unschedulable", "immutable", "publishNotReadyAddresses"}
META_KINDS = {"DeleteOptions", "Status", "ListOptions", "GetOptions", "CreateOptions", "PatchOptions",
              "UpdateOptions"}


@lru_cache(maxsize=1)
def fields() -> dict:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "protobuf_fields.json")) as f:
        return json.load(f)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _wire_fields(data: bytes):
    """(field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(kind: str, wire: int, value):
    if kind == "string":
        return value.decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "bool":
        return bool(value)
    if kind in ("int32", "int64", "uint32", "uint64", "enum"):
        return _signed(value)
    if kind in ("double", "float"):
        return struct.unpack("<d" if kind == "double" else "<f", value)[0]
    raise ValueError(f"unsupported scalar type {kind}")


def _repeated_scalars(kind: str, wire: int, value) -> list:
    if wire == 2 and kind not in ("string", "bytes"):  # packed
        out, pos = [], 0
        while pos < len(value):
            item, pos = _varint(value, pos)
            out.append(_scalar(kind, 0, item))
        return out
    return [_scalar(kind, wire, value)]


def _time(data: bytes, micro: bool) -> str | None:
    parts = {n: _signed(v) for n, _, v in _wire_fields(data)}
    seconds = parts.get(1, 0)
    if seconds in (ZERO_TIME_SECONDS, 0):
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{parts.get(2, 0) // 1000:06d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _special(type_name: str, data: bytes):
    """Messages that JSON shows as plain values; NotImplemented for ordinary messages."""
    if type_name == f"{META}.Time":
        return _time(data, micro=False)
    if type_name == f"{META}.MicroTime":
        return _time(data, micro=True)
    if type_name == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        parts = {n: v for n, _, v in _wire_fields(data)}
        return parts.get(3, b"").decode() if parts.get(1) == 1 else _signed(parts.get(2, 0))
    if type_name == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        return next((v.decode() for n, _, v in _wire_fields(data) if n == 1), "0")
    if type_name in ("k8s.io.apimachinery.pkg.runtime.RawExtension", f"{META}.FieldsV1"):
        raw = next((v for n, _, v in _wire_fields(data) if n == 1), b"")
        return json.loads(raw) if raw else None
    if type_name == f"{META}.Duration":
        nanos = next((_signed(v) for n, _, v in _wire_fields(data) if n == 1), 0)
        return f"{nanos / 1e9:g}s"
    return NotImplemented


def decode_message(type_name: str, data: bytes):
    special = _special(type_name, data)
    if special is not NotImplemented:
        return special
    table = fields().get(type_name)
    if table is None:
        raise ValueError(f"unknown protobuf message {type_name}")
    out: dict = {}
    for number, wire, value in _wire_fields(data):
        spec = table.get(str(number))
        if spec is None:
            continue
        name, kind, type_ref, repeated = spec
        if kind == "map":
            key, item = None, None
            value_kind, value_type = type_ref
            for n, w, v in _wire_fields(value):
                if n == 1:
                    key = v.decode()
                elif n == 2:
                    item = decode_message(value_type, v) if value_kind == "message" else _scalar(value_kind, w, v)
            out.setdefault(name, {})[key] = item if item is not None else ("" if value_kind == "string" else item)
        elif kind == "message":
            decoded = decode_message(type_ref, value)
            if repeated:
                out.setdefault(name, []).append(decoded)
            elif decoded is not None:
                out[name] = decoded
        elif repeated:
            out.setdefault(name, []).extend(_repeated_scalars(kind, wire, value))
        else:
            scalar = _scalar(kind, wire, value)
            if scalar not in ("", 0, False) or (name in ZERO_IS_MEANINGFUL and scalar != ""):
                out[name] = scalar
    return out


def _message_type(api_version: str, kind: str) -> str:
    if kind in META_KINDS:
        return f"{META}.{kind}"
    group, _, version = api_version.rpartition("/")
    package = group.split(".")[0] if group else "core"
    return f"k8s.io.api.{package}.{version}.{kind}"


def decode(body: bytes) -> dict:
    """A protobuf request body as the JSON object it stands for."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("the protobuf body does not start with the Kubernetes magic number")
    try:
        envelope = {n: v for n, _, v in _wire_fields(body[len(MAGIC):])}
        type_meta = {n: v.decode() for n, _, v in _wire_fields(envelope.get(1, b""))}
        api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
        obj = decode_message(_message_type(api_version, kind), envelope.get(2, b""))
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError, struct.error,
            RecursionError) as e:  # any malformed body, e.g. a wire type that does not fit the field
        raise errors.bad_request(f"the protobuf body could not be decoded: {e}") from e
    return {"apiVersion": api_version, "kind": kind, **obj}
