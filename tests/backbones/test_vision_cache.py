import os
import stat
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


def test_memory_lru_is_capped_in_bytes(tmp_path: Path) -> None:
    entry = features().numel() * 4  # 48 bytes
    cache = VisionFeatureCache(tmp_path, "ns", memory_items=100, disk=False, memory_max_bytes=2 * entry)
    for i in range(3):
        cache.put(f"{i:064x}", features() + i)
    assert cache.get(f"{0:064x}") is None and cache.get(f"{2:064x}") is not None
    cache.configure(memory_max_bytes=entry)  # shrinking evicts at once, oldest first
    assert cache.get(f"{1:064x}") is None and torch.equal(cache.get(f"{2:064x}"), features() + 2)
    cache.put("ff" * 32, torch.zeros(100))  # an entry larger than the whole cap is not kept
    assert cache.get("ff" * 32) is None and cache.get(f"{2:064x}") is not None


def test_disk_cache_is_capped_and_evicts_least_recently_used(tmp_path: Path) -> None:
    one = len(_entry_bytes(tmp_path))
    cache = VisionFeatureCache(tmp_path, "ns", memory_items=0, disk_max_bytes=3 * one + 10)
    digests = [f"{i:064x}" for i in range(6)]
    for i, digest in enumerate(digests[:3]):
        cache.put(digest, features() + i)
        os.utime(cache.path_for(digest), (1000 + i, 1000 + i))  # deterministic ages: 0 oldest
    cache.get(digests[0])  # a read refreshes entry 0: entry 1 is now the least recently used
    cache.put(digests[3], features() + 3)
    on_disk = sorted(p.name[:2] for p in cache.root.rglob("*.bin"))
    assert sum(p.stat().st_size for p in cache.root.rglob("*.bin")) <= 3 * one + 10
    assert cache.stats.evicted >= 1 and not cache.path_for(digests[1]).exists()
    assert cache.path_for(digests[0]).exists() and cache.path_for(digests[3]).exists(), on_disk


def _entry_bytes(tmp_path: Path) -> bytes:
    probe = VisionFeatureCache(tmp_path / "probe", "ns")
    probe.put(DIGEST, features())
    return probe.path_for(DIGEST).read_bytes()


def test_entries_are_private_to_the_user(tmp_path: Path) -> None:
    cache = VisionFeatureCache(tmp_path, "ns")
    cache.put(DIGEST, features())
    assert stat.S_IMODE(cache.path_for(DIGEST).stat().st_mode) == 0o600  # features derived from user images
    assert stat.S_IMODE(cache.path_for(DIGEST).parent.stat().st_mode) & 0o077 == 0
