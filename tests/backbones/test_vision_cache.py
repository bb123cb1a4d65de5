from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tsembed.backbones.vision_cache import VisionCacheWarning, VisionFeatureCache, default_cache_dir, namespace_for

DIGEST = "ab" * 32


def features() -> torch.Tensor:
    return torch.arange(12, dtype=torch.float32).view(3, 4)


def test_roundtrip_through_disk(tmp_path: Path) -> None:
    VisionFeatureCache(tmp_path, "ns").put(DIGEST, features())
    fresh = VisionFeatureCache(tmp_path, "ns")  # new process: empty memory, same disk
    assert torch.equal(fresh.get(DIGEST), features())
    assert (fresh.stats.disk_hits, fresh.stats.misses) == (1, 0)
    assert torch.equal(fresh.get(DIGEST), features())
    assert fresh.stats.memory_hits == 1
    assert fresh.get("cd" * 32) is None and fresh.stats.misses == 1


def test_namespaces_are_separate(tmp_path: Path) -> None:
    VisionFeatureCache(tmp_path, namespace_for({"image_size": 128})).put(DIGEST, features())
    assert VisionFeatureCache(tmp_path, namespace_for({"image_size": 160})).get(DIGEST) is None


def test_memory_lru_evicts_oldest(tmp_path: Path) -> None:
    cache = VisionFeatureCache(tmp_path, "ns", memory_items=2, disk=False)
    for i in range(3):
        cache.put(f"{i:064x}", features() + i)
    assert cache.get(f"{0:064x}") is None
    assert torch.equal(cache.get(f"{2:064x}"), features() + 2)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda blob: blob[: len(blob) - 7], "payload has"),  # truncated write
        (lambda blob: blob[:-4] + b"\x00\x01\x02\x03", "checksum mismatch"),  # garbled payload
        (lambda blob: blob[:10] + b"#" * 20 + blob[30:], "unreadable header"),  # garbled header
        (lambda blob: b"", "bad magic"),  # empty file
    ],
)
def test_corrupted_entry_warns_is_removed_and_recomputed(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    VisionFeatureCache(tmp_path, "ns").put(DIGEST, features())
    cache = VisionFeatureCache(tmp_path, "ns")
    path = cache.path_for(DIGEST)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(VisionCacheWarning, match=reason):
        assert cache.get(DIGEST) is None
    assert not path.exists() and cache.stats.corrupted == 1
    cache.put(DIGEST, features())  # the caller recomputes and stores again
    assert torch.equal(VisionFeatureCache(tmp_path, "ns").get(DIGEST), features())


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    cache = VisionFeatureCache(tmp_path, "ns")
    cache.put(DIGEST, features())
    assert [p.name for p in cache.root.rglob("*") if p.is_file()] == [f"{DIGEST}.bin"]


def test_default_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "vision"
    assert VisionFeatureCache(None, "ns").root == tmp_path / "vision" / "ns"
    monkeypatch.delenv("TSEMBED_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "tsembed" / "vision"
