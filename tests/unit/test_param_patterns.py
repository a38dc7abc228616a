"""Every pattern of the DAG params' schemas matches a whole string: Python's re (the jsonschema validator Airflow
runs server-side) and ECMAScript (the trigger form's regexes) both refuse a value that is valid but for a trailing
newline."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import playwright
import pytest

from k8smove.params import DEPLOY_PARAMS, END_MAINTENANCE_PARAMS, MIGRATE_PARAMS, NODE_MAINTENANCE_PARAMS

# One of these matches each pattern (a name, a label, a quantity, an image, a namespace/release)
VALID_EXAMPLES = ("demo", "node1", "demo-", "example.com/zone", "", "1Gi", "postgres:16", "default/demo")
# Playwright's own Node.js (installed with the test requirements): an ECMAScript engine wherever the tests run
NODE = Path(playwright.__file__).parent / "driver" / "node"


def patterns_in(schema) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["pattern"]} if isinstance(schema.get("pattern"), str) else set()
        return found.union(*(patterns_in(value) for value in schema.values()))
    if isinstance(schema, (list, tuple)):
        return set().union(*(patterns_in(value) for value in schema))
    return set()


PATTERNS = sorted(patterns_in([DEPLOY_PARAMS, MIGRATE_PARAMS, NODE_MAINTENANCE_PARAMS, END_MAINTENANCE_PARAMS]))
CASES = [(pattern, next(e for e in VALID_EXAMPLES if re.search(pattern, e))) for pattern in PATTERNS]


def test_every_pattern_has_a_valid_example():
    assert len(PATTERNS) >= 9
    assert all(example is not None for _, example in CASES)


@pytest.mark.parametrize("pattern,example", CASES)
def test_python_re_refuses_a_trailing_newline(pattern, example):
    assert re.search(pattern, example) and not re.search(pattern, example + "\n")


def test_ecmascript_refuses_a_trailing_newline():
    """new RegExp(pattern, "u") is what a JSON-schema validator in the browser (ajv) builds from a pattern."""
    script = ("const cases = JSON.parse(process.argv[1]);"
              "console.log(JSON.stringify(cases.map(([p, e]) => [new RegExp(p, 'u').test(e), "
              "new RegExp(p, 'u').test(e + '\\n')])));")
    out = subprocess.run([str(NODE), "-e", script, json.dumps(CASES)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[True, False]] * len(CASES)
