"""File helpers shared by every writer: outputs appear whole or not at all."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tsembed.errors import StorageError


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0o022)  # the umask can only be read by setting it; done once, at import
    os.umask(mask)
    return 0o666 & ~mask


NEW_FILE_MODE = _new_file_mode()


def cache_root() -> Path:
    """Where tsembed keeps derived files between runs: ``$TSEMBED_CACHE_DIR`` if set, else ``~/.cache/tsembed``."""
    root = os.environ.get("TSEMBED_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tsembed"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block finishes.

    A crash or an exception never leaves a half-written ``path``; the temporary file is removed.
    Not mkstemp: its 0600 mode would survive the rename; a random name keeps concurrent writers apart.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create 0600: saved models are meant to be shared
            os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        reason = write_failure(exc)
        if reason is not None:
            kept = " (the previous file there is untouched)" if path.exists() else ""
            raise StorageError(f"could not write {path}: {reason}{kept}") from exc
        raise


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# what torch's zip writer says when a write came up short (a full disk): "unexpected pos 123 vs 456"
_TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing")


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in words, when the cause is the disk (full, over quota, a short write); else None."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return f"no space left on the device ({exc.strerror or exc}); free some space and run again"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_SHORT_WRITE):
        return (f"the write stopped part-way, the disk is probably full ({str(exc).splitlines()[0][:200]}); "
                "free some space and run again")
    return None


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block's duration.

    Lets processes that would compute the same cached file (two runs side by side, both needing one bridge)
    take turns: the second waits, then finds the file. A no-op where ``fcntl`` is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
