"""Saved files appear whole, and readable like any file the user creates (safetensors alone makes 0600)."""

import os
import stat

import torch
from safetensors.torch import save_file

from tests.training.helpers import toy_model
from tsembed import fileio


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_mode_follows_the_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    assert fileio.NEW_FILE_MODE == 0o666 & ~mask


def test_every_file_of_a_saved_model_gets_the_new_file_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "NEW_FILE_MODE", 0o644)  # as under the usual umask 022
    path = fileio.atomic_write(tmp_path / "w.safetensors", lambda p: save_file({"a": torch.zeros(2)}, str(p)))
    assert _mode(path) == 0o644  # safetensors itself creates 0600
    directory = toy_model().save_pretrained(tmp_path / "model")
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_exclusive_lock_makes_a_second_holder_wait(tmp_path):
    import threading
    import time

    from tsembed.fileio import exclusive_lock

    lock, events, held = tmp_path / "x.lock", [], threading.Event()

    def first():
        with exclusive_lock(lock):
            held.set()
            time.sleep(0.3)
            events.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with exclusive_lock(lock):  # a separate open file: blocks until the first holder lets go
        events.append("second in")
    thread.join()
    assert events == ["first done", "second in"]


def test_d11_disk_full_during_a_save_names_the_file(tmp_path, monkeypatch):
    """Issue 24, D11: a full disk during a save surfaced as torch's "unexpected pos …"; now the error names the file,
    says the disk is full, and leaves no temporary file (the previous file, if any, untouched)."""
    import errno

    import pytest

    from tsembed.errors import StorageError, TsembedError
    from tsembed.training.checkpoint import STATE_NAME, save_checkpoint

    model = toy_model()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tsembed.model.save_file", full)
    with pytest.raises(StorageError, match=r"could not write .*trainable\.safetensors: no space left on the") as info:
        model.save_pretrained(tmp_path / "model")
    assert isinstance(info.value, OSError) and isinstance(info.value, TsembedError)
    assert not [p for p in (tmp_path / "model").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    def short_write(*args, **kwargs):  # what torch's zip writer raises when the disk fills mid-file
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 4224 vs 4112")

    monkeypatch.setattr("tsembed.training.checkpoint.torch.save", short_write)
    with pytest.raises(StorageError, match=rf"could not write .*{STATE_NAME}: the write stopped part-way, the disk is "
                                           r"probably full \(\[enforce fail"):
        save_checkpoint(tmp_path / "run", model, {"step": 3}, keep=2)
    with pytest.raises(RuntimeError, match="unrelated"):  # other failures pass through unchanged
        fileio.atomic_write(tmp_path / "x", lambda p: (_ for _ in ()).throw(RuntimeError("unrelated")))
