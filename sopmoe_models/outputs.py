"""Where sopmoe writes, and what it never replaces unless asked (README "Reliability").

- :func:`refuse_existing`: an existing result (a file, or a folder that is not empty) is a :class:`UserError` naming
  the flag that allows replacing it (``--overwrite``, ``--resume``, ``--append``).
- The marker :data:`MARKER` (``.sopmoe.json``, ``{"written_by": "sopmoe merge", ...}``) sits in every folder sopmoe
  writes as a whole. A destructive flag only ever deletes a folder whose marker names the same command
  (:func:`written_by`); any other folder is refused, whatever the flag.
- :func:`overlaps`: a destination that is, or contains, one of the command's inputs is refused.
- :func:`write_atomic` / :func:`write_json` / :func:`atomic_path`: a file is written under a uniquely named hidden
  sibling and renamed into place, so a reader never sees half a file and a kill leaves the previous one;
  :func:`read_json` reads such a file back (a damaged one is one line naming it).
- :func:`new_temp_dir` + :func:`replace_dir`: a folder is written whole under a uniquely named hidden sibling and
  renamed into place; the folder it replaces is first renamed aside under a unique name and deleted only once the new
  one is in place. No fixed name (``X.tmp``, ``X.old``) is used, so nothing the user owns is ever deleted by accident,
  and a kill at any moment leaves either the old folder or the new one under the final name (plus, at worst, a hidden
  leftover that :func:`remove_leftovers` clears inside folders sopmoe owns).
- :func:`folder_lock`: separate processes that read, change and write a file shared in one folder (``sopmoe evaluate
  --append`` jobs into one run folder) take turns, so no job's change is lost whatever the interleaving.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sopmoe_models.errors import UserError

MARKER = ".sopmoe.json"
MARKER_FORMAT = "sopmoe-output/1"
LOCK = ".sopmoe.lock"
log = logging.getLogger(__name__)


# --- markers ---------------------------------------------------------------------------------------------------
def write_marker(folder: str | Path, command: str, **extra: Any) -> Path:
    """Mark ``folder`` as written by ``sopmoe <command>`` (atomic JSON write)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": MARKER_FORMAT, "written_by": f"sopmoe {command}",
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    return write_json(folder / MARKER, record)


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of ``folder``, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MARKER
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def written_by(folder: str | Path, command: str) -> bool:
    """Whether ``folder``'s marker says ``sopmoe <command>`` wrote it."""
    marker = read_marker(folder)
    return bool(marker) and marker.get("written_by") == f"sopmoe {command}"


# --- guards ----------------------------------------------------------------------------------------------------
def has_content(path: str | Path) -> bool:
    """A file, a link, or a folder with anything in it but the lock file of :func:`folder_lock`."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return any(p.name != LOCK for p in path.iterdir())
    return path.exists() or path.is_symlink()


def refuse_existing(path: str | Path, what: str, allow: str = "--overwrite") -> None:
    """Raise :class:`UserError` when ``path`` holds something (``what`` names it; ``allow`` the flag(s) that let
    the user replace it)."""
    if has_content(path):
        raise UserError(f"{path}: {what} already exists; pass {allow} to replace it, or choose another path")


def resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def overlaps(dest: str | Path, inputs: Iterable[str | Path | None]) -> list[Path]:
    """The inputs that ``dest`` is or contains (each resolved; None entries ignored)."""
    d = resolved(dest)
    out = []
    for p in inputs:
        if p is None or str(p) == "":
            continue
        q = resolved(p)
        if q == d or d in q.parents:
            out.append(q)
    return out


# --- whole files ------------------------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A uniquely named hidden sibling of ``path`` to write into; renamed to ``path`` when the block ends without an
    error, deleted when it raises (the previous ``path``, if any, is then left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:10]}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole: temporary sibling, then rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented UTF-8 JSON (keys in the order given, one trailing newline), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, damaged: str = "", error: type[UserError] = UserError) -> Any:
    """What :func:`write_json` wrote: the JSON at ``path``, UTF-8. Undecodable bytes or broken JSON raise ``error``
    in one line naming the file and where it breaks, followed by ``damaged`` (what to do about it)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}){damaged}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno}){damaged}") from None


# --- whole folders -----------------------------------------------------------------------------------------------
def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{uuid.uuid4().hex[:10]}")


def new_temp_dir(final: str | Path) -> Path:
    """A fresh, uniquely named hidden sibling of ``final`` to write the new folder into."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Put the folder ``tmp`` in place as ``final`` with renames only; a previous ``final`` is renamed aside (unique
    name) and deleted after the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    aside = None
    if final.exists() or final.is_symlink():
        aside = _sibling(final, "old")
        final.rename(aside)
    tmp.rename(final)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    return final


def leftovers(parent: str | Path, name: str, kind: str) -> list[Path]:
    """Hidden siblings ``.<name>.<kind>-*`` that :func:`new_temp_dir` / :func:`replace_dir` left after a kill."""
    parent = Path(parent)
    return sorted(parent.glob(f".{name}.{kind}-*")) if parent.is_dir() else []


def remove_leftovers(parent: str | Path, name: str) -> None:
    """Delete unfinished temporary folders of ``name`` under ``parent`` (only inside folders sopmoe owns)."""
    for p in leftovers(parent, name, "tmp"):
        shutil.rmtree(p, ignore_errors=True)


# --- one writer at a time --------------------------------------------------------------------------------------
@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (its empty hidden file :data:`LOCK`) while the block runs.

    Linux and macOS: ``fcntl.flock``; Linux's NFS client maps it to NFS locks, so jobs on several nodes sharing a
    run folder take turns too. Windows: ``msvcrt.locking`` of the file's first byte. The operating system drops the
    lock with its process, so a killed job never leaves a stale lock behind. Not re-entrant: a block must not take
    the same folder's lock again. On a file system without locks (some parallel file systems mounted without
    ``flock``) the block runs unlocked after a warning: one job at a time is then the user's to ensure."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _lock(fd)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.warning("%s: this file system refuses file locks (%s); jobs writing into %s at the same time may "
                        "lose each other's results: run them one after another", path, e.strerror, folder)
            yield
            return
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:  # LK_LOCK gives up after 10 s; a job may hold the lock longer (moving a model folder)
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EDEADLOCK):  # held by another process: wait
                    raise
                time.sleep(0.05)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


# --- identities --------------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
