import pytest

from tsembed.data import DATASETS, META_TASKS, DatasetInfo, get_dataset, register_dataset
from tsembed.data.registry import IMAGE_TARGET, SUITE_DATASETS
from tsembed.errors import ConfigError


def test_unknown_dataset_error_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'Nope'; valid names: .*EmojiGroup"):
        get_dataset("Nope")


def test_suite_registry_covers_all_meta_tasks_with_ind_and_ood() -> None:
    assert len(SUITE_DATASETS) >= 12
    assert {d.meta_task for d in SUITE_DATASETS} == set(META_TASKS)
    assert {d.ood for d in SUITE_DATASETS} == {True, False}
    assert get_dataset("NameToImage").target_template == "<|image_1|>\nRepresent the given image."


def test_templates_fill_content_without_interpreting_braces() -> None:
    info = get_dataset("CountVQA")
    assert info.format_query("how many {x}?").endswith("question: how many {x}?")
    assert info.format_target("3") == "3"
    assert get_dataset("NameToImage").format_target("ignored") == IMAGE_TARGET


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta_task": "ranking"}, "meta_task must be one of"),
        ({"ood": True, "files": {"train": "t.jsonl"}}, "out-of-distribution dataset has no train split"),
        ({"files": {"test": "t.jsonl"}}, "unknown split"),
        ({"query_template": "{text} {text}"}, "at most one"),
    ],
)
def test_dataset_info_checks_name_the_field(kwargs: dict, message: str) -> None:
    base = {
        "name": "X",
        "meta_task": "retrieval",
        "ood": False,
        "query_template": "{text}",
        "target_template": "{text}",
    }
    with pytest.raises(ConfigError, match=message):
        DatasetInfo(**{**base, **kwargs})


def test_register_dataset_refuses_silent_replacement(monkeypatch) -> None:
    monkeypatch.setattr("tsembed.data.registry.DATASETS", dict(DATASETS))
    from tsembed.data import registry

    info = DatasetInfo("MyMMEB", "vqa", False, "{text}", "{text}", files={"eval": "e.parquet"})
    register_dataset(info)
    assert registry.get_dataset("MyMMEB") is info
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset(info)
    assert DatasetInfo.from_dict(info.to_dict()) == info
    with pytest.raises(ConfigError, match="unknown key"):
        DatasetInfo.from_dict({**info.to_dict(), "split": "x"})


def test_meta_task_names_are_spelled_through_the_registry(monkeypatch) -> None:
    """mteb's task hints and the suite builder name meta-tasks through ``meta_task``: a renamed meta-task fails
    when they are imported, instead of silently matching nothing."""
    import importlib.util
    from pathlib import Path

    from tsembed.data import registry
    from tsembed.data.registry import meta_task

    assert meta_task("vqa") == "vqa"
    with pytest.raises(ConfigError, match=r"'visual-qa' is not a meta-task; meta-tasks: \['classification'"):
        meta_task("visual-qa")
    src = Path(registry.__file__).resolve().parents[1]
    modules = [src / "data" / "suite" / "build.py"]
    if importlib.util.find_spec("mteb") is not None:
        from tsembed.integrations.mteb import TASK_HINTS

        assert set(TASK_HINTS.values()) <= set(META_TASKS)
        modules.append(src / "integrations" / "mteb.py")
    monkeypatch.setattr(registry, "META_TASKS", ("classification", "visual-qa", "retrieval", "grounding"))
    for path in modules:  # a fresh copy of the module, so the imported one stays as it is
        spec = importlib.util.spec_from_file_location(f"_renamed_{path.stem}", path)
        with pytest.raises(ConfigError, match="'vqa' is not a meta-task"):
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
