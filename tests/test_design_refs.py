"""Every ``docs/design.md §N`` a source file cites names a section of the design document in the repository."""

import re
from pathlib import Path

import tsembed

ROOT = Path(tsembed.__file__).resolve().parents[2]


def test_every_design_reference_in_the_source_resolves():
    design = ROOT / "docs" / "design.md"
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\b", design.read_text(encoding="utf-8"), flags=re.M))
    assert {"3.2", "5.2"} <= sections  # the reader works
    cited = {}
    for path in (ROOT / "src").rglob("*.py"):
        for ref in re.findall(r"design\.md\s*§\s*(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8")):
            cited.setdefault(ref, []).append(path.name)
    assert cited, "no reference found: the pattern no longer matches how the code cites the design"
    missing = {ref: files for ref, files in cited.items() if ref not in sections}
    assert not missing, f"design.md has no such section: {missing}"
    stale = sorted(p.name for p in (ROOT / "src").rglob("*.py") if "DESIGN §" in p.read_text(encoding="utf-8"))
    assert not stale, f"cite docs/design.md, which ships with the repository: {stale}"
