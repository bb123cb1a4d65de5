"""Dataset registry: what each dataset is (meta-task, IND/OOD) and how its inputs are worded.

Templates follow MMEB: a query is `instruction + content`, an image side carries `<|image_1|>`, and
image targets read "<|image_1|>\\nRepresent the given image.". `{text}` marks where a row's content goes.
The built-in entries describe the offline OpenMoji suites and the real MMEB-V1 benchmark (its 36 eval and
20 train datasets, so a downloaded MMEB is grouped by meta-task and IND/OOD as in the paper); `register_dataset`
adds others. `files` is empty here and filled from a built suite's manifest (`load_suite`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tsembed.errors import ConfigError
from tsembed.inputs import IMAGE_PLACEHOLDER

META_TASKS: tuple[str, ...] = ("classification", "vqa", "retrieval", "grounding")


def meta_task(name: str) -> str:
    """``name``, checked against ``META_TASKS``: code that needs a meta-task by name (``integrations/mteb.py``,
    ``data/suite/build.py``) spells it through this, so renaming one fails loudly where it is imported instead of
    silently matching nothing."""
    if name not in META_TASKS:
        raise ConfigError(f"{name!r} is not a meta-task; meta-tasks: {list(META_TASKS)}")
    return name


SPLITS: tuple[str, ...] = ("train", "dev", "eval")  # dev: held-out IND rows in eval format (optional)
RANKED_SPLITS: tuple[str, ...] = ("eval", "dev")  # eval format: each query ranked against its own candidates
TEXT_SLOT = "{text}"

IMAGE_TARGET = f"{IMAGE_PLACEHOLDER}\nRepresent the given image."
CROP_TARGET = f"{IMAGE_PLACEHOLDER}\nRepresent the given cropped image of the emoji."
VQA_QUERY = f"{IMAGE_PLACEHOLDER}\nRepresent the given image with the following question: {TEXT_SLOT}"
EDIT_QUERY = f"{IMAGE_PLACEHOLDER}\nGiven an emoji image, find the same emoji with the described change: {TEXT_SLOT}"


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of a benchmark.

    Attributes:
        name: Unique name, e.g. "EmojiGroup".
        meta_task: One of META_TASKS; results are aggregated per meta-task.
        ood: Out-of-distribution: evaluation only, never trained on.
        query_template: Instruction for queries; `{text}` is replaced by the row's content.
        target_template: Same for targets/candidates ("{text}" for plain text labels).
        files: Split ("train"/"dev"/"eval") -> file path relative to the suite root.
        description: One line for the dataset card.
        condition: For conditional-similarity datasets (the conflict suite): which notion of similarity the
            instruction asks for, e.g. "tone"; "" for ordinary datasets.
    """

    name: str
    meta_task: str
    ood: bool
    query_template: str
    target_template: str
    files: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    condition: str = ""

    def __post_init__(self) -> None:
        if self.meta_task not in META_TASKS:
            raise ConfigError(
                f"dataset {self.name!r}: meta_task must be one of {list(META_TASKS)}, got {self.meta_task!r}"
            )
        unknown = sorted(set(self.files) - set(SPLITS))
        if unknown:
            raise ConfigError(f"dataset {self.name!r}: files has unknown split(s) {unknown}; allowed: {list(SPLITS)}")
        if self.ood and "train" in self.files:
            raise ConfigError(f"dataset {self.name!r}: an out-of-distribution dataset has no train split")
        for attr in ("query_template", "target_template"):
            template = getattr(self, attr)
            if template.count(TEXT_SLOT) > 1 or template.count(IMAGE_PLACEHOLDER) > 1:
                raise ConfigError(
                    f"dataset {self.name!r}: `{attr}` {template!r} may hold at most one "
                    f"{TEXT_SLOT} and one {IMAGE_PLACEHOLDER}"
                )
        object.__setattr__(self, "files", dict(self.files))

    def format_query(self, text: str = "") -> str:
        """Instruction + content for a query (plain replace, so braces in content are safe)."""
        return self.query_template.replace(TEXT_SLOT, text)

    def format_target(self, text: str = "") -> str:
        return self.target_template.replace(TEXT_SLOT, text)

    @property
    def task(self) -> str:
        """What its inputs declare to a task-hinted router: the condition where there is one, else the meta-task."""
        return self.condition or self.meta_task

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self.files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"dataset entry has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)


def _suite(name: str, meta_task: str, ood: bool, query: str, target: str, description: str) -> DatasetInfo:
    return DatasetInfo(name, meta_task, ood, query, target, description=description)


_P = IMAGE_PLACEHOLDER
#: The offline OpenMoji suite (see `tsembed.data.suite`); 10 in-distribution + 5 out-of-distribution.
SUITE_DATASETS: tuple[DatasetInfo, ...] = (
    # classification
    _suite(
        "EmojiGroup",
        "classification",
        False,
        f"{_P}\nRepresent the given emoji image for classification into its emoji group.",
        TEXT_SLOT,
        "emoji image -> one of the 9 Unicode emoji groups",
    ),
    _suite(
        "EmojiSubgroup",
        "classification",
        False,
        f"{_P}\nRepresent the given emoji image for classification into its fine-grained subgroup.",
        TEXT_SLOT,
        "emoji image -> one of ~100 Unicode subgroups",
    ),
    _suite(
        "SkinTone",
        "classification",
        False,
        f"{_P}\nRepresent the given emoji image for classification of its skin tone.",
        TEXT_SLOT,
        "emoji image -> skin tone (5 Fitzpatrick tones or default yellow)",
    ),
    _suite(
        "EmojiGroupGray",
        "classification",
        True,
        f"{_P}\nRepresent the given grayscale, rotated emoji image for classification into its emoji group.",
        TEXT_SLOT,
        "grayscale, rotated emoji image -> emoji group (domain shift)",
    ),
    # VQA
    _suite(
        "CountVQA", "vqa", False, VQA_QUERY, TEXT_SLOT, "canvas + 'how many times does <name> appear?' -> a count 0-9"
    ),
    _suite("LeftOfVQA", "vqa", False, VQA_QUERY, TEXT_SLOT, "canvas + 'what is to the left of <name>?' -> emoji name"),
    _suite(
        "BackgroundVQA", "vqa", False, VQA_QUERY, TEXT_SLOT, "canvas + 'what colour is the background?' -> colour name"
    ),
    _suite(
        "AboveVQA",
        "vqa",
        True,
        VQA_QUERY,
        TEXT_SLOT,
        "canvas + 'what is directly above <name>?' -> emoji name (unseen vertical relation)",
    ),
    # retrieval
    _suite(
        "NameToImage",
        "retrieval",
        False,
        f"Retrieve the emoji image that matches the given name: {TEXT_SLOT}",
        IMAGE_TARGET,
        "emoji name -> emoji image",
    ),
    _suite(
        "ImageToName",
        "retrieval",
        False,
        f"{_P}\nFind the name of the emoji in the given image.",
        TEXT_SLOT,
        "emoji image -> emoji name",
    ),
    _suite(
        "SkinToneEdit",
        "retrieval",
        False,
        EDIT_QUERY,
        IMAGE_TARGET,
        "composed: emoji image + 'the same with dark skin tone' -> image (CIRR-like)",
    ),
    _suite(
        "GenderEdit",
        "retrieval",
        True,
        EDIT_QUERY,
        IMAGE_TARGET,
        "composed: emoji image + 'the same but as a woman' -> image (unseen edit)",
    ),
    _suite(
        "ShortcodeToImage",
        "retrieval",
        True,
        f"Retrieve the emoji image for the given chat shortcode: {TEXT_SLOT}",
        IMAGE_TARGET,
        "chat shortcode such as ':clock6:' -> emoji image (unseen text style)",
    ),
    # grounding
    _suite(
        "EmojiGrounding",
        "grounding",
        False,
        f'{_P}\nSelect the portion of the image that isolates the emoji labeled as "{TEXT_SLOT}"',
        CROP_TARGET,
        "canvas + emoji name -> the crop showing it, among crops",
    ),
    _suite(
        "RelationalGrounding",
        "grounding",
        True,
        f'{_P}\nSelect the portion of the image that isolates the emoji described as "{TEXT_SLOT}"',
        CROP_TARGET,
        "canvas + 'the emoji to the right of <name>' -> crop (RefCOCO-like)",
    ),
)


def _conflict(name: str, condition: str, ood: bool, query: str, target: str, description: str) -> DatasetInfo:
    return DatasetInfo(name, "retrieval", ood, query, target, description=description, condition=condition)


SHAPE_TARGET = f"{_P}\nRepresent the emoji itself, ignoring its colour and skin tone."
COLOUR_TARGET = f"{_P}\nRepresent the colour of the emoji, ignoring which emoji it is."
ROLE_TARGET = f"{_P}\nRepresent the emoji itself, ignoring whether it shows a man, a woman or a person."
GENDER_TARGET = f"{_P}\nRepresent the gender of the person in the emoji, ignoring which emoji it is."
#: Condition pairs of the conflict suite: in each, the positive of one condition is the other's hardest distractor.
CONFLICT_PAIRS: dict[str, tuple[str, str]] = {
    "identity-vs-tone": ("ToneSameEmoji", "ToneSameTone"),
    "shape-vs-colour": ("TintSameEmoji", "TintSameColour"),
    "object-vs-colour-word": ("TextSameObject", "TextSameColour"),
    "role-vs-gender": ("GenderSameEmoji", "GenderSameGender"),
}
#: The conflict suite (`build-suite --kind conflict`): conditional similarity over one shared gallery per query.
CONFLICT_DATASETS: tuple[DatasetInfo, ...] = (
    _conflict("ToneSameEmoji", "identity", False, f"{_P}\nFind the same emoji in any skin tone.", SHAPE_TARGET,
              "emoji image -> the same emoji in another skin tone (the same-tone emoji is the trap)"),
    _conflict("ToneSameTone", "tone", False, f"{_P}\nFind a different emoji with the same skin tone.", COLOUR_TARGET,
              "emoji image -> another emoji in the same skin tone (the same emoji in another tone is the trap)"),
    _conflict("TintSameEmoji", "shape", False, f"{_P}\nFind the same emoji in any colour.", SHAPE_TARGET,
              "tinted emoji image -> the same emoji in another tint (the same-tint emoji is the trap)"),
    _conflict("TintSameColour", "colour", False, f"{_P}\nFind any emoji of the same colour.", COLOUR_TARGET,
              "tinted emoji image -> another emoji in the same tint (the same emoji in another tint is the trap)"),
    _conflict("TextSameObject", "object", False, f"Find this emoji in any colour: {TEXT_SLOT}", SHAPE_TARGET,
              "'green apple' -> the apple in another tint (a green emoji is the trap)"),
    _conflict("TextSameColour", "colour-word", False, f"Find any emoji of the colour named here: {TEXT_SLOT}",
              COLOUR_TARGET, "'green apple' -> another emoji in green (the apple in another tint is the trap)"),
    _conflict("ToneSameEmojiReworded", "identity", True, f"{_P}\nRetrieve this emoji, whatever its skin colour.",
              SHAPE_TARGET, "ToneSameEmoji's eval queries under an unseen instruction wording"),
    _conflict("TintSameColourReworded", "colour", True, f"{_P}\nWhich other emoji is painted in this colour?",
              COLOUR_TARGET, "TintSameColour's eval queries under an unseen instruction wording"),
    _conflict("TextToneSameObject", "object", True, f"Find this emoji in any skin tone: {TEXT_SLOT}", SHAPE_TARGET,
              "'man running with dark skin tone' -> the same emoji in another tone (unseen combination)"),
    _conflict("TextToneSameTone", "tone", True, f"Find any emoji with the skin tone named here: {TEXT_SLOT}",
              COLOUR_TARGET, "'man running with dark skin tone' -> another emoji in that tone (unseen combination)"),
    # the gender stream (`build-suite --kind conflict --conflict-streams tone,tint,text,gender`); every candidate
    # of a query shows its skin tone, so emoji and gender are all that differ
    _conflict("GenderSameEmoji", "role", False, f"{_P}\nFind the same emoji in any gender.", ROLE_TARGET,
              "person emoji image -> the same emoji as another gender (the same-gender emoji is the trap)"),
    _conflict("GenderSameGender", "gender", False, f"{_P}\nFind a different emoji with the same gender.",
              GENDER_TARGET, "person emoji image -> another emoji of the same gender (man, woman or person; the "
              "same emoji as another gender is the trap)"),
    _conflict("GenderSameEmojiReworded", "role", True,
              f"{_P}\nRetrieve this emoji, whether it shows a man, a woman or a person.", ROLE_TARGET,
              "GenderSameEmoji's eval queries under an unseen instruction wording"),
    _conflict("GenderSameGenderReworded", "gender", True,
              f"{_P}\nWhich other emoji shows a man, a woman or a person, as this one does?", GENDER_TARGET,
              "GenderSameGender's eval queries under an unseen instruction wording"),
)
#: Further wordings of each in-distribution conflict query (`build-suite --train-wordings N`: train rows cycle
#: through the dataset's own wording and the first N - 1 of these; dev and eval keep the one wording). None repeats
#: an eval rewording's distinctive words (retrieve, whatever, painted, which other, skin colour, whether it shows)
#: or the dev rewordings of docs/results/compose/ (show me, look up, get, match): a router or adapter that learns
#: several wordings per task is then still tested on wordings it never saw.
CONFLICT_TRAIN_WORDINGS: dict[str, tuple[str, ...]] = {
    "ToneSameEmoji": (f"{_P}\nSearch for this emoji shown with a different skin tone.",
                      f"{_P}\nSame emoji, other skin tone: find it.",
                      f"{_P}\nLocate this emoji with its skin tone changed."),
    "ToneSameTone": (f"{_P}\nSearch for another emoji sharing this skin tone.",
                     f"{_P}\nSame skin tone, different emoji: find one.",
                     f"{_P}\nLocate an emoji unlike this one but with its skin tone."),
    "TintSameEmoji": (f"{_P}\nSearch for this emoji shown in a different colour.",
                      f"{_P}\nSame emoji, other colour: find it.",
                      f"{_P}\nLocate this emoji with its colour changed."),
    "TintSameColour": (f"{_P}\nSearch for another emoji sharing this colour.",
                       f"{_P}\nSame colour, different emoji: find one.",
                       f"{_P}\nLocate an emoji unlike this one but in its colour."),
    "TextSameObject": (f"Search for the emoji described here, in a different colour: {TEXT_SLOT}",
                       f"Same emoji as described, other colour: {TEXT_SLOT}",
                       f"Locate the described emoji with its colour changed: {TEXT_SLOT}"),
    "TextSameColour": (f"Search for another emoji sharing the colour described here: {TEXT_SLOT}",
                       f"Same colour as described, different emoji: {TEXT_SLOT}",
                       f"Locate an emoji in the colour this description names: {TEXT_SLOT}"),
    "GenderSameEmoji": (f"{_P}\nSearch for this emoji shown as another gender.",
                        f"{_P}\nSame emoji, other gender: find it.",
                        f"{_P}\nLocate this emoji with its gender changed."),
    "GenderSameGender": (f"{_P}\nSearch for another emoji sharing this gender.",
                         f"{_P}\nSame gender, different emoji: find one.",
                         f"{_P}\nLocate an emoji unlike this one but of its gender."),
}
MAX_TRAIN_WORDINGS = 1 + min(len(w) for w in CONFLICT_TRAIN_WORDINGS.values())
#: Streams of the conflict suite (`build-suite --conflict-streams`): which datasets each one adds. One stream's
#: datasets share episodes (tone, tint, gender) or ask about them in words (text: the tint and tone streams' text
#: queries). The default is the suite as first built; the gender stream is opt-in, so earlier suites rebuild
#: byte for byte.
CONFLICT_STREAMS: dict[str, tuple[str, ...]] = {
    "tone": ("ToneSameEmoji", "ToneSameTone", "ToneSameEmojiReworded"),
    "tint": ("TintSameEmoji", "TintSameColour", "TintSameColourReworded"),
    "text": ("TextSameObject", "TextSameColour", "TextToneSameObject", "TextToneSameTone"),
    "gender": ("GenderSameEmoji", "GenderSameGender", "GenderSameEmojiReworded", "GenderSameGenderReworded"),
}
DEFAULT_CONFLICT_STREAMS: tuple[str, ...] = ("tone", "tint", "text")


def conflict_pairs(streams: tuple[str, ...] = DEFAULT_CONFLICT_STREAMS) -> dict[str, tuple[str, str]]:
    """The condition pairs whose two datasets the given streams build (in CONFLICT_PAIRS order)."""
    built = {name for stream in streams for name in CONFLICT_STREAMS[stream]}
    return {pair: sides for pair, sides in CONFLICT_PAIRS.items() if set(sides) <= built}
#: Templates of `build-suite --kind conflict --no-instructions`: every condition worded alike, so only the
#: data says which similarity is wanted (the INSTRUCTOR §4.1 control: near chance on one side of each pair).
NEUTRAL_IMAGE_QUERY = f"{_P}\nFind the matching emoji."
NEUTRAL_TEXT_QUERY = f"Find the matching emoji: {TEXT_SLOT}"

#: Suite kind -> its datasets.
SUITE_KINDS: dict[str, tuple[DatasetInfo, ...]] = {"standard": SUITE_DATASETS, "conflict": CONFLICT_DATASETS}

_C, _V, _R, _G = META_TASKS
#: MMEB-V1 (VLM2Vec, Jiang et al., ICLR 2025, Table 1): (name, meta-task, OOD, modality and what it asks). Names are
#: the folder names of the Hub dataset TIGER-Lab/MMEB-eval; 20 in-distribution, 16 out-of-distribution.
_MMEB_EVAL: tuple[tuple[str, str, bool, str], ...] = (
    ("ImageNet-1K", _C, False, "I -> T: one of 1,000 ImageNet classes"),
    ("N24News", _C, False, "I+T -> T: news image and text -> one of 24 categories"),
    ("HatefulMemes", _C, False, "I -> T: is the meme hateful (yes/no)"),
    ("VOC2007", _C, False, "I -> T: one of 20 PASCAL VOC object classes"),
    ("SUN397", _C, False, "I -> T: one of 397 scene categories"),
    ("Place365", _C, True, "I -> T: one of 365 scene categories"),
    ("ImageNet-A", _C, True, "I -> T: adversarially filtered ImageNet images"),
    ("ImageNet-R", _C, True, "I -> T: renditions (art, cartoons, ...) of ImageNet classes"),
    ("ObjectNet", _C, True, "I -> T: objects in unusual poses and backgrounds"),
    ("Country211", _C, True, "I -> T: the country a photo was taken in"),
    ("OK-VQA", _V, False, "I+T -> T: questions needing outside knowledge"),
    ("A-OKVQA", _V, False, "I+T -> T: augmented OK-VQA"),
    ("DocVQA", _V, False, "I+T -> T: questions about document images"),
    ("InfographicsVQA", _V, False, "I+T -> T: questions about infographics"),
    ("ChartQA", _V, False, "I+T -> T: questions about charts"),
    ("Visual7W", _V, False, "I+T -> T: 7W questions about everyday images"),
    ("ScienceQA", _V, True, "I+T -> T: science questions with diagrams"),
    ("VizWiz", _V, True, "I+T -> T: questions from blind users' photos"),
    ("GQA", _V, True, "I+T -> T: compositional questions about scenes"),
    ("TextVQA", _V, True, "I+T -> T: questions about text in images"),
    ("VisDial", _R, False, "T -> I: a dialogue about an image -> the image"),
    ("CIRR", _R, False, "I+T -> I: composed image retrieval (image + modification)"),
    ("VisualNews_t2i", _R, False, "T -> I: news caption -> news image"),
    ("VisualNews_i2t", _R, False, "I -> T: news image -> caption"),
    ("MSCOCO_t2i", _R, False, "T -> I: caption -> COCO image"),
    ("MSCOCO_i2t", _R, False, "I -> T: COCO image -> caption"),
    ("NIGHTS", _R, False, "I -> I: the perceptually most similar image"),
    ("WebQA", _R, False, "T -> I+T: question -> web image with its text"),
    ("FashionIQ", _R, True, "I+T -> I: fashion item + requested change -> item"),
    ("Wiki-SS-NQ", _R, True, "T -> I: question -> Wikipedia screenshot"),
    ("OVEN", _R, True, "I+T -> I+T: image + question -> Wikipedia entity"),
    ("EDIS", _R, True, "T -> I+T: news query -> image with headline"),
    ("MSCOCO", _G, False, "I+T -> I: image + object name -> the crop showing it"),
    ("RefCOCO", _G, True, "I+T -> I: image + referring expression -> the crop"),
    ("RefCOCO-Matching", _G, True, "I+T -> I+T: referring expression matched against crops with expressions"),
    ("Visual7W-Pointing", _G, True, "I+T -> I: image + question -> the crop that answers it"),
)
#: MMEB-train: the 20 in-distribution datasets, named as the Hub dataset TIGER-Lab/MMEB-train names its folders
#: (ImageNet_1K there, ImageNet-1K in MMEB-eval); each has an `original` and a `diverse_instruction` split.
MMEB_TRAIN_NAMES: tuple[str, ...] = (
    "ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA",
    "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t",
    "NIGHTS", "WebQA", "MSCOCO",
)


def _mmeb(name: str, meta_task: str, ood: bool, description: str) -> DatasetInfo:
    # MMEB rows carry their instructions (`qry_text` = instruction + content), so the templates pass content through.
    return DatasetInfo(name, meta_task, ood, TEXT_SLOT, TEXT_SLOT, description=f"MMEB: {description}")


#: The 36 MMEB-V1 evaluation datasets, in the paper's order (classification, VQA, retrieval, grounding).
MMEB_EVAL_DATASETS: tuple[DatasetInfo, ...] = tuple(_mmeb(*entry) for entry in _MMEB_EVAL)
_MMEB_BY_NAME = {info.name: info for info in MMEB_EVAL_DATASETS}
#: The 20 MMEB-train datasets: the in-distribution eval datasets under their train folder names.
MMEB_TRAIN_DATASETS: tuple[DatasetInfo, ...] = tuple(
    _MMEB_BY_NAME.get(name) or replace(_MMEB_BY_NAME[name.replace("_", "-")], name=name) for name in MMEB_TRAIN_NAMES
)

#: name -> DatasetInfo; the one registry of datasets known to tsembed.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (*SUITE_DATASETS, *CONFLICT_DATASETS, *MMEB_EVAL_DATASETS, *MMEB_TRAIN_DATASETS)
}


def get_dataset(name: str) -> DatasetInfo:
    """Look a dataset up by name.

    Raises:
        ConfigError: Unknown name; the message lists the valid names.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None


def register_dataset(info: DatasetInfo, *, overwrite: bool = False) -> DatasetInfo:
    """Add a dataset (e.g. a real MMEB dataset) to the registry.

    Raises:
        ConfigError: The name is taken and `overwrite` is False.
    """
    if info.name in DATASETS and not overwrite:
        raise ConfigError(f"dataset {info.name!r} is already registered; pass overwrite=True to replace it")
    DATASETS[info.name] = info
    return info


#: Tint name -> RGB of the mid-tones: far apart in hue, so "the same colour" is unambiguous from pixels.
TINTS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (235, 195, 0),
    "green": (30, 165, 60),
    "cyan": (0, 185, 205),
    "blue": (40, 75, 230),
    "purple": (150, 45, 200),
}
#: `build-suite --tint-palette`: "six" (TINTS, the default) or "twelve", the six with one hue between each
#: neighbouring pair (the six keep their RGB, so an emoji's red copy is the same image in either palette).
TINT_PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {
    "six": TINTS,
    "twelve": {
        "red": TINTS["red"],
        "orange": (240, 115, 0),
        "yellow": TINTS["yellow"],
        "lime": (130, 200, 0),
        "green": TINTS["green"],
        "teal": (0, 160, 130),
        "cyan": TINTS["cyan"],
        "azure": (0, 125, 230),
        "blue": TINTS["blue"],
        "violet": (100, 50, 225),
        "purple": TINTS["purple"],
        "magenta": (215, 30, 160),
    },
}
DEFAULT_PALETTE = "six"
