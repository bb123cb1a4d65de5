from tsembed.data.suite.catalog import DEFAULT_TONE, base_key, load_catalog, variant_key
from tsembed.data.suite.context import fingerprints, merge_identical_bases


def test_base_key_strips_tones_genders_and_mirror_images() -> None:
    person_running = base_key("1F3C3", "person-sport")
    for code in (
        "1F3C3-1F3FF",
        "1F3C3-200D-2640-FE0F",
        "1F3C3-1F3FB-200D-2642-FE0F",
        "1F3C3-200D-27A1-FE0F",
        "1F3C3-1F3FD-200D-2640-FE0F-200D-27A1-FE0F",
    ):
        assert base_key(code, "person-sport") == person_running
    assert base_key("1F468-200D-1F373", "person-role") == base_key("1F469-200D-1F373", "person-role")
    assert base_key("1F468-200D-1F469-200D-1F467", "family") == "family"
    assert base_key("1F600", "face-smiling") != person_running


def test_variant_key_keeps_what_an_edit_must_change() -> None:
    woman_dark = "1F3C4-1F3FF-200D-2640-FE0F"
    assert variant_key(woman_dark, tone=True, gender=False) == "1F3C4-200D-2640"  # tone edit group
    assert variant_key(woman_dark, tone=False, gender=True) == "1F3C4-1F3FF"  # gender edit group


def test_catalog_has_names_groups_tones_and_genders() -> None:
    items = load_catalog()
    assert len(items) > 3000 and len({it.group for it in items}) == 9
    by_name = {it.name: it for it in items}
    wave = by_name["waving hand: dark skin tone"]
    assert (wave.tone, wave.group, wave.subgroup) == ("dark", "People & Body", "hand fingers open")
    assert by_name["waving hand"].tone == DEFAULT_TONE
    assert by_name["woman surfing"].gender == "woman" and by_name["grinning face"].gender is None
    assert by_name["grinning face"].tone is None
    assert by_name["flag: Germany"].subgroup == "country flag"


def test_identical_looking_emoji_share_a_base() -> None:
    items = merge_identical_bases(load_catalog(), fingerprints())
    by_name = {it.name: it for it in items}
    assert by_name["flag: France"].base == by_name["flag: St. Martin"].base
    assert by_name["flag: France"].base != by_name["flag: Germany"].base
