"""Where built guest images live, and how they get there safely.

Images are built from downloaded packages, which is slow and needs the network, so
the results are cached outside the repository. Two rules keep the cache trustworthy:

- *Atomic publication.* A build happens in a hidden temporary directory next to its
  destination and is renamed into place only when every file (the manifest last) is
  written. An interrupted run leaves a ``.build-*`` directory behind, never a
  directory that looks complete; the next run removes the leftovers.
- *One builder at a time.* Builders take an exclusive ``flock`` on a lock file in the
  cache. A second ``hospes image`` waits instead of downloading into the same place.
  Readers (code that boots the images) need no lock: they only ever see complete
  directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hospes.errors import HospesError

LOCK_NAME = ".lock"
BUILD_PREFIX = ".build-"
OLD_PREFIX = ".old-"


class ImagesError(HospesError):
    """Building or finding guest images failed; the message says what to do."""


def default_cache_dir() -> Path:
    """Return the cache root: ``$HOSPES_CACHE_DIR``, else ``$XDG_CACHE_HOME/hospes``,
    else ``~/.cache/hospes``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec asks.
    """
    explicit = os.environ.get("HOSPES_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "hospes"
    return Path.home() / ".cache" / "hospes"


@contextlib.contextmanager
def cache_lock(directory: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the exclusive build lock of ``directory`` for the ``with`` body.

    The lock is advisory (``flock``) and dies with the process, so a killed run can
    never leave the cache locked. While it is held, leftovers of interrupted builds
    are removed: nobody else can be writing them.
    """
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ImagesError(f"Cannot create the lock file {path}: {exc.strerror}; choose a "
                          "writable cache directory (--cache-dir or $HOSPES_CACHE_DIR).") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another 'hospes image' run (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _remove_leftovers(directory)
        yield
    finally:
        os.close(fd)


def _remove_leftovers(directory: Path) -> None:
    """Delete temporary directories of interrupted builds (caller holds the lock)."""
    for child in directory.iterdir():
        if not child.name.startswith((BUILD_PREFIX, OLD_PREFIX)):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` on success.

    On an exception the temporary directory is deleted and ``target`` is untouched.
    An existing ``target`` is moved aside before the new one is renamed in and is
    deleted afterwards, so at no instant does a partial directory carry its name.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX + target.name + "-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the images are not secret
    try:
        yield tmp
        _fsync_tree(tmp)
        old: Path | None = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX + target.name + "-",
                                        dir=target.parent))
            os.rename(target, old / target.name)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` (inside a directory being built) with ``mode``."""
    path.write_bytes(data)
    path.chmod(mode)


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as stable, human-readable JSON, replacing ``path`` atomically."""
    tmp = path.with_name(f"{BUILD_PREFIX}{path.name}-{os.getpid()}")
    write_file(tmp, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fsync_tree(root: Path) -> None:
    """Flush every file of a finished build so the rename publishes durable data."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
