"""DAG params from k8smove.params' JSON schemas, dressed for the trigger form."""
from __future__ import annotations

from airflow.sdk import Param

JSON_HINT = ('Enter a JSON object, e.g. {"demo": "node2"}: keys and string values in double quotes. Paste it: '
             'typed, it comes out mangled (the editor inserts a closing quote or brace for each opening one).')


def form_schema(name: str, schema: dict) -> dict:
    """The schema as the trigger form shows it: the title names the conf key (Airflow's errors name the key, the
    form the title), and the description states the allowed range or values and how to type an object."""
    notes = [schema.get("description", "")]
    if "minimum" in schema and "maximum" in schema:
        notes.append(f"Allowed: {schema['minimum']} to {schema['maximum']}; the form clamps a number out of range "
                     "instead of refusing it, so check the value before triggering.")
    if "enum" in schema:
        notes.append(f"One of: {', '.join(schema['enum'])}.")
    enum_items = (schema.get("items") or {}).get("enum")
    if enum_items:
        notes.append(f"Any of: {', '.join(enum_items)}.")
    if "object" in (schema["type"] if isinstance(schema.get("type"), list) else [schema.get("type")]):
        notes.append(JSON_HINT)
    extra = {"examples": list(enum_items)} if enum_items else {}   # Airflow renders an array with examples as a
    return {**schema, **extra, "title": f"{schema['title']} ({name})",   # multi-select
            "description": " ".join(n for n in notes if n)}


def dag_params(schemas: dict[str, dict]) -> dict[str, Param]:
    return {name: Param(**form_schema(name, schema)) for name, schema in schemas.items()}
