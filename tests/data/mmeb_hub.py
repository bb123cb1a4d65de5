"""Tiny copies of MMEB-eval and MMEB-train in exactly the layout the Hub downloads have (see
``tsembed.data.mmeb_layout``): a folder per dataset holding ``<split>-00000-of-00001.parquet``, rows with MMEB's
field names and instructions, and images unpacked into per-dataset folders. A few rows each, generated images."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
IMAGE_TARGET = "<|image_1|> Represent the given image."
#: name -> (meta-task, OOD) as the registry has them; the fixture covers every meta-task and both IND and OOD.
EVAL_FIXTURE = {
    "ImageNet-1K": ("classification", False),
    "Place365": ("classification", True),
    "OK-VQA": ("vqa", False),
    "MSCOCO_t2i": ("retrieval", False),
    "RefCOCO": ("grounding", True),
}
EVAL_SCHEMA = pa.schema([("qry_text", pa.string()), ("qry_img_path", pa.string()),
                         ("tgt_text", pa.list_(pa.string())), ("tgt_img_path", pa.list_(pa.string()))])


def write_image(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), COLOURS[colour]).save(path)


def _eval_rows(name: str, images: Path) -> list[dict]:
    """Rows as MMEB-eval holds them: instruction inside `qry_text`, the positive first, '' for no image."""
    names = list(COLOURS)
    rows = []
    for i, colour in enumerate(names):
        others = [c for c in names if c != colour]
        cands = [colour, *others]
        img = f"{name}/{colour}.png"
        if name in ("ImageNet-1K", "Place365"):
            write_image(images / img, colour)
            rows.append({"qry_text": "<|image_1|> Represent the given image for classification", "qry_img_path": img,
                         "tgt_text": cands, "tgt_img_path": [""] * len(cands)})
        elif name == "OK-VQA":
            write_image(images / img, colour)
            rows.append({"qry_text": "<|image_1|> Represent the given image with the following question: "
                         f"what colour is this? ({i})", "qry_img_path": img,
                         "tgt_text": cands, "tgt_img_path": [""] * len(cands)})
        elif name == "MSCOCO_t2i":
            paths = [f"{name}/{c}.png" for c in cands]
            for c, p in zip(cands, paths, strict=True):
                write_image(images / p, c)
            rows.append({"qry_text": f"Find me an everyday image that matches the given caption: a {colour} square",
                         "qry_img_path": "", "tgt_text": [IMAGE_TARGET] * len(cands), "tgt_img_path": paths})
        else:  # grounding: the query image and the crops
            write_image(images / img, colour)
            paths = [f"{name}/crop_{c}.png" for c in cands]
            for c, p in zip(cands, paths, strict=True):
                write_image(images / p, c)
            rows.append({"qry_text": "<|image_1|> Select the portion of the image that isolates the object labeled "
                         f'as "{colour}"', "qry_img_path": img,
                         "tgt_text": ["<|image_1|> Represent the given cropped image of the object"] * len(cands),
                         "tgt_img_path": paths})
    return rows


def write_mmeb_eval(root: Path, images: Path, names: tuple[str, ...] = tuple(EVAL_FIXTURE)) -> dict[str, list[dict]]:
    """``root/<name>/test-00000-of-00001.parquet`` per dataset (plus the clone's README and images.zip, which
    readers must ignore); images under ``images/<name>/``. Returns the rows written, by dataset."""
    written = {}
    for name in names:
        rows = _eval_rows(name, images)
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA), root / name / "test-00000-of-00001.parquet")
        written[name] = rows
    (root / "README.md").write_text("---\nconfigs: ...\n---\n# MMEB-eval\n")
    (root / "images.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip, as a stand-in
    return written


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


#: MMEB-train subsets in the fixture: name -> rows per split.
TRAIN_FIXTURE = {"ImageNet_1K": 4, "MSCOCO_t2i": 3}


def _train_rows(name: str, count: int, wording: str, root: Path) -> list[dict]:
    colours = list(COLOURS)
    rows = []
    for i in range(count):
        colour = colours[i % len(colours)]
        path = f"images/{name}/{colour}_{i}.png"  # MMEB-train's paths start at the clone: images/<Subset>/...
        write_image(root / path, colour)
        if name == "ImageNet_1K":
            rows.append({"qry": f"<|image_1|> {wording} image for classification", "qry_image_path": path,
                         "pos_text": colour, "pos_image_path": "", "neg_text": "", "neg_image_path": ""})
        else:
            rows.append({"qry": f"{wording} caption: a {colour} square number {i}", "qry_image_path": "",
                         "pos_text": IMAGE_TARGET, "pos_image_path": path, "neg_text": "", "neg_image_path": ""})
    return rows


def write_mmeb_train(root: Path) -> Path:
    """``root/<name>/{original,diverse_instruction}-00000-of-00001.parquet`` and ``root/images/<name>/``."""
    for name, count in TRAIN_FIXTURE.items():
        original = _train_rows(name, count, "Represent the given", root)
        write_parquet(root / name / "original-00000-of-00001.parquet", original)
        write_parquet(root / name / "diverse_instruction-00000-of-00001.parquet",
                      _train_rows(name, count + 1, "Encode this", root))
    return root


# ----- rows VLM2Vec's readers accept and a strict reader would refuse ---------------------------------------------
#: A classification dataset whose candidate lists repeat the positive (candidate 0 again at index 2).
REPEATED_DATASET = "N24News"


def write_repeated_positive_eval(root: Path, images: Path, num_rows: int = 6) -> list[dict]:
    """``root/N24News/test-00000-of-00001.parquet`` where every other row lists its positive twice. VLM2Vec-V1 keys
    candidates by (text, image path), so both copies share one embedding and tie; its ``argmax`` gives the tie to
    candidate 0."""
    labels = ["sports", "politics", "health", "travel", "science", "food"]
    rows = []
    for i in range(num_rows):
        colour = list(COLOURS)[i % len(COLOURS)]
        img = f"{REPEATED_DATASET}/{colour}_{i}.png"
        write_image(images / img, colour)
        positive = labels[i % len(labels)]
        others = [label for label in labels if label != positive][:3]
        cands = [positive, others[0], positive, others[1]] if i % 2 == 0 else [positive, *others]
        rows.append({"qry_text": "<|image_1|> Represent the given news image with the following caption for domain "
                     f"classification: a story about {positive} number {i}", "qry_img_path": img,
                     "tgt_text": cands, "tgt_img_path": [""] * len(cands)})
    (root / REPEATED_DATASET).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA),
                   root / REPEATED_DATASET / "test-00000-of-00001.parquet")
    return rows


def write_placeholderless_eval(root: Path, images: Path) -> list[dict]:
    """``root/VisDial/test-...parquet`` whose image candidates carry no text at all (no ``<|image_1|>``), as
    MMEB-V2's instruction-split files hold them; VLM2Vec's readers put the image token in front."""
    rows = []
    names = list(COLOURS)
    for colour in names:
        paths = [f"VisDial/{c}.png" for c in [colour, *(c for c in names if c != colour)]]
        for p in paths:
            write_image(images / p, p.split("/")[1][:-4])
        rows.append({"qry_text": f"Represent the given dialogue about an image: Q: what colour is it? A: {colour}",
                     "qry_img_path": "", "tgt_text": [""] * len(paths), "tgt_img_path": paths})
    (root / "VisDial").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA), root / "VisDial" / "test-00000-of-00001.parquet")
    return rows


def write_visdial_train(root: Path, count: int = 4) -> Path:
    """``root/VisDial/original-00000-of-00001.parquet`` as MMEB-train holds VisDial: a text dialogue query, an image
    positive, and a hard negative with ``neg_text: ""`` beside its ``neg_image_path``."""
    colours = list(COLOURS)
    rows = []
    for i in range(count):
        colour, other = colours[i % len(colours)], colours[(i + 1) % len(colours)]
        pos, neg = f"images/VisDial/{colour}_{i}.png", f"images/VisDial/{other}_{i}.png"
        write_image(root / pos, colour)
        write_image(root / neg, other)
        rows.append({"qry": f"Represent the given dialogue about an image, which is used for image retrieval: "
                     f"Q: what colour is square {i}? A: {colour}", "qry_image_path": "",
                     "pos_text": "<|image_1|>\nRepresent the given image.", "pos_image_path": pos,
                     "neg_text": "", "neg_image_path": neg})
    write_parquet(root / "VisDial" / "original-00000-of-00001.parquet", rows)
    return root
