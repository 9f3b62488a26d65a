"""Write the JSON schemas that `validate_kserve.py` checks KServe objects against, from KServe's CRDs.

    python deploy/kserve/schemas/extract_crd_schemas.py CRD.yaml [CRD.yaml ...] --kserve v0.20.0

Takes each CRD's served versions' ``openAPIV3Schema`` without the descriptions (the CRDs are 2 MB
with them) and records where it came from (KServe tag, file, sha256). The committed schemas came
from kserve/kserve at tag v0.20.0, config/crd/full/serving.kserve.io_{clusterservingruntimes,
inferenceservices}.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node: Any) -> Any:
    """The schema without ``description`` keys (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(prop) for name, prop in value.items()}
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crds", type=Path, nargs="+")
    parser.add_argument("--kserve", required=True, help="the KServe release the CRDs come from, e.g. v0.20.0")
    args = parser.parse_args()
    for path in args.crds:
        raw = path.read_bytes()
        crd = yaml.safe_load(raw)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            out = HERE / f"{kind.lower()}-{version['name']}.json"
            schema = {
                "x-source": {"kserve": args.kserve, "file": path.name, "sha256": hashlib.sha256(raw).hexdigest(),
                             "apiVersion": f"{group}/{version['name']}", "kind": kind},
                **strip_descriptions(version["schema"]["openAPIV3Schema"]),
            }
            out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
            print(f"{out.name}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
