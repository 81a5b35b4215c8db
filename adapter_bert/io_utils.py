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
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a directory; refusing to replace it")
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


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    r"""A UTF-8 file's text, without its byte-order mark, with one-line errors.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not UTF-8 (naming the line and byte), or it starts with two
            byte-order marks (an editor's double save; the second would end up in the text).

    Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.tsv"
    >>> _ = path.write_bytes("\ufeffid\tx\n".encode("utf-8"))
    >>> read_text(path)
    'id\tx\n'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (line {line}, byte {e.start})") from None
    text = text.removeprefix("\ufeff")
    if text.startswith("\ufeff"):
        raise ValueError(f"{path} starts with two byte-order marks; save it as UTF-8 with at "
                         "most one")
    return text


def read_json(path: str | os.PathLike, what: str = "file"):
    """Reads JSON with one-line errors for a missing or corrupt file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


class DirectoryBusyError(RuntimeError):
    """Another live process holds a `DirectoryLock` on the directory."""


class DirectoryLock:
    """An exclusive claim on a directory by one process: the lock file `path` holds its pid.

    A second process is refused with one line while the holder lives; a lock left by a process
    that died (its pid no longer runs on this machine) is taken over.

    Example:
    >>> import tempfile
    >>> lock_file = Path(tempfile.mkdtemp()) / ".out.lock"
    >>> with DirectoryLock(lock_file):
    ...     lock_file.read_text() == str(os.getpid())
    True
    >>> lock_file.exists()
    False
    """

    def __init__(self, path: str | os.PathLike, what: str = "another run",
                 directory: str | os.PathLike | None = None):
        self.path = Path(path)
        self.what = what
        self.directory = Path(directory) if directory is not None else self.path.parent

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise DirectoryBusyError(f"{self.what} (pid {holder}) is writing to "
                                             f"{self.directory}; wait for it or use another "
                                             "directory") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise DirectoryBusyError(f"cannot lock {self.directory}")

    def release(self) -> None:
        if _lock_holder(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tensors(dict):
    """`{name: array}` to be written as one safetensors file, with its header's `metadata`."""

    def __init__(self, tensors, metadata: dict | None = None):
        super().__init__(tensors)
        self.metadata = metadata


def write_file(path: str | os.PathLike, content) -> None:
    """`Tensors` as a safetensors file, anything else as JSON (both through a temporary file and
    a rename)."""
    from safetensors.numpy import save_file
    import numpy as np

    if isinstance(content, Tensors):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in content.items()}, str(tmp),
                  metadata=content.metadata)
        os.replace(tmp, path)
    else:
        write_json(path, content)
