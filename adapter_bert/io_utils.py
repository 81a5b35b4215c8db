"""Writing files so that a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yields a fresh temporary directory that replaces `target` only if the block succeeds.

    The temporary directory sits beside `target` (same filesystem, so the final renames are
    atomic). If the block raises, `target` is untouched and the temporary directory is removed.
    An existing `target` is moved aside, the new one renamed into place, then the old one deleted;
    if the process dies between those two renames, the old files survive in `.<name>.old-*`, and
    `recover_directory` puts them back.

    Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_directory(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hello")
    >>> (root / "out" / "a.txt").read_text()
    'hello'
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_directory(target: str | os.PathLike) -> bool:
    """Restores `target` from a `.<name>.old-*` copy left by a save that died mid-swap."""
    target = Path(target)
    if target.exists():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.is_dir() else []
    if not olds:
        return False
    os.rename(olds[-1], target)
    return True


def write_json(path: str | os.PathLike, value) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, what: str = "file"):
    """Reads JSON with one-line errors for a missing or corrupt file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
