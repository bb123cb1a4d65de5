"""Write dev-only copies of a conflict suite whose dev queries carry the rewordings in dev-paraphrases.json.

Amendment 3's check (README.md): a router that only matches the training wordings is found out on dev, never on
the eval split. Copy i gets each dataset's i-th rewording; rows, images and targets are unchanged, and the copy
lists only the dev split (its images are a link to the source suite's).

    python docs/results/compose/paraphrased_suite.py suites/conflict-s0 suites/conflict-s0-para
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def reworded(query: str, template: str, rewording: str) -> str:
    """The row's query with its template swapped for ``rewording`` ({text}: the row's own content)."""
    head, sep, tail = template.partition("{text}")
    if not sep:
        if query != template:
            raise ValueError(f"query {query!r} is not its dataset's instruction {template!r}")
        return rewording
    if not (query.startswith(head) and query.endswith(tail)):
        raise ValueError(f"query {query!r} does not follow its template {template!r}")
    return rewording.replace("{text}", query[len(head):len(query) - len(tail)])


def write_copies(source: Path, out_prefix: Path) -> list[Path]:
    manifest = json.loads((source / "suite.json").read_text())
    rewordings = json.loads((HERE / "dev-paraphrases.json").read_text())["rewordings"]
    count = {len(v) for v in rewordings.values()}.pop()
    copies = []
    for i in range(count):
        out = out_prefix.with_name(f"{out_prefix.name}{i}")
        (out / "dev").mkdir(parents=True, exist_ok=True)
        datasets = {}
        for name, options in rewordings.items():
            info = dict(manifest["datasets"][name])
            rows = [json.loads(line) for line in (source / info["files"]["dev"]).read_text().splitlines() if line]
            for row in rows:
                row["qry_text"] = reworded(row["qry_text"], info["query_template"], options[i])
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (out / "dev" / f"{name}.jsonl").write_text(text)
            info.update(query_template=options[i], files={"dev": f"dev/{name}.jsonl"})
            datasets[name] = info
        if not (out / "images").exists():
            os.symlink((source / manifest.get("image_root", ".") / "images").resolve(), out / "images")
        copy = {**manifest, "datasets": datasets, "paraphrased_from": str(source), "rewording": i}
        (out / "suite.json").write_text(json.dumps(copy, indent=2) + "\n")
        copies.append(out)
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the suite to copy (its dev split)")
    parser.add_argument("out_prefix", type=Path, help="copies go to OUT_PREFIX0, OUT_PREFIX1, ...")
    args = parser.parse_args()
    for out in write_copies(args.source, args.out_prefix):
        print(out)


if __name__ == "__main__":
    main()
