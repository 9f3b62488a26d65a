"""Validate rendered KServe objects offline against KServe's own CRD schemas, strictly.

    kubectl kustomize deploy/kserve | python deploy/kserve/validate_kserve.py -

The schemas in ``schemas/`` come from KServe's CRDs at the release they name (``x-source``);
``kubernetes-validate`` knows only built-in kinds, so KServe's are checked here. Strict as the API
server's field validation is: a field the schema does not name is an error, unless the schema
keeps unknown fields (``x-kubernetes-preserve-unknown-fields``). Any other kind goes to
``kubernetes-validate --strict``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def strict(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever properties are listed and unknown
    fields are not explicitly kept."""
    if isinstance(node, dict):
        out = {key: (({name: strict(p) for name, p in value.items()} if key == "properties" else strict(value))
                     if isinstance(value, (dict, list)) else value) for key, value in node.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


def load_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, for every schema file."""
    found = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        source = schema.pop("x-source")
        found[(source["apiVersion"], source["kind"])] = strict(schema)
    return found


def problems(doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """What is wrong with one KServe object (empty: valid)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    name = f"{key[1]} {doc.get('metadata', {}).get('name', '?')}"
    if not doc.get("metadata", {}).get("name"):
        return [f"{name}: metadata.name is missing"]
    validator = jsonschema.Draft7Validator(schemas[key])
    return [f"{name}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def validate(docs: list[dict[str, Any]], kubernetes_version: str = "1.30.0") -> list[str]:
    """Every problem of every object: KServe kinds here, the rest through kubernetes-validate."""
    schemas = load_schemas()
    found: list[str] = []
    others = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in schemas:
            found += problems(doc, schemas)
        elif str(doc.get("apiVersion", "")).startswith("serving.kserve.io/"):
            found.append(f"{doc.get('kind')} {doc.get('apiVersion')}: no schema for it in {SCHEMAS}")
        else:
            others.append(doc)
    if others:
        result = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", kubernetes_version, "-"],
            input=yaml.safe_dump_all(others), capture_output=True, text=True)
        if result.returncode:
            found.append((result.stdout + result.stderr).strip())
    return found


def main() -> None:
    source = sys.stdin if len(sys.argv) < 2 or sys.argv[1] == "-" else open(sys.argv[1])
    docs = [d for d in yaml.safe_load_all(source) if d]
    found = validate(docs)
    for line in found:
        print(line, file=sys.stderr)
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    print(f"{len(docs)} objects ({kinds}): " + ("valid" if not found else f"{len(found)} problems"), file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
