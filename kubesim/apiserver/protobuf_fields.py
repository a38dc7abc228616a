"""Regenerates protobuf_fields.json: the field numbers of the Kubernetes protobuf messages.

kubectl's typed clients send request bodies as application/vnd.kubernetes.protobuf. The message
definitions ship inside every Go client binary as gzipped FileDescriptorProtos; this tool reads them
from a kubectl binary and keeps what decoding needs:
    python -m kubesim.apiserver.protobuf_fields "$(command -v kubectl)"
"""
from __future__ import annotations

import json
import os
import re
import sys
import zlib

GZIP_HEADER = rb"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
WANTED_FILES = re.compile(r"k8s\.io/(api/(core|apps|policy|coordination|discovery|storage|events|autoscaling)/v1|"
                          r"apimachinery/pkg/(apis/meta/v1|runtime|util/intstr|api/resource))/generated\.proto$")
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protobuf_fields.json")


def file_descriptors(binary: bytes):
    from google.protobuf import descriptor_pb2
    for match in re.finditer(GZIP_HEADER, binary):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(binary[match.start():match.start() + 4_000_000])
            descriptor = descriptor_pb2.FileDescriptorProto()
            descriptor.ParseFromString(raw)
        except Exception:  # most gzip-looking byte runs are something else
            continue
        if WANTED_FILES.search(descriptor.name):
            yield descriptor


def _type_name(field) -> str:
    from google.protobuf import descriptor_pb2
    names = {v: k[5:].lower() for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
    return names[field.type]


def field_table(descriptors) -> dict:
    """message name -> {number: [json name, type, message type or None, repeated]}; maps as type "map"."""
    table: dict[str, dict] = {}

    def visit(message, prefix: str) -> None:
        name = f"{prefix}.{message.name}"
        entries = {f"{name}.{n.name}": n for n in message.nested_type if n.options.map_entry}
        fields = {}
        for field in message.field:
            kind = _type_name(field)
            type_name = field.type_name.lstrip(".") or None
            if type_name in entries:
                entry = entries[type_name]
                value = entry.field[1]   # field[0] is the key: always a string in the API
                fields[str(field.number)] = [field.json_name or field.name, "map",
                                             [_type_name(value), value.type_name.lstrip(".") or None], False]
                continue
            fields[str(field.number)] = [field.name, kind, type_name, field.label == 3]
        table[name] = fields
        for nested in message.nested_type:
            if not nested.options.map_entry:
                visit(nested, name)

    for descriptor in descriptors:
        for message in descriptor.message_type:
            visit(message, descriptor.package)
    return table


def main(path: str) -> None:
    with open(path, "rb") as f:
        table = field_table(file_descriptors(f.read()))
    with open(OUTPUT, "w") as f:
        json.dump(table, f, separators=(",", ":"), sort_keys=True)
    print(f"{len(table)} messages -> {OUTPUT}")


if __name__ == "__main__":
    main(os.path.realpath(sys.argv[1]))
