"""Safe outputs: atomic writes that keep an existing file's mode, checks that an output can be written
before any work starts, and an exclusive lock per output for the whole run.

Nothing of the project is imported here, so every module may use these helpers without forming an
import circle.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["atomic_write", "check_writable", "distinct_paths", "locked", "replacing", "stem_file"]


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on POSIX),
    on any exception it is removed and ``path`` is left as it was.

    The new file gets the mode of the file it replaces (or, for a new file, what the umask allows),
    not the temporary file's 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = _new_file_mode()
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise _naming(err, path) from err
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """The same error, its message naming the file being written (a bare ``[Errno 28]`` names none)."""
    if str(path) in str(err):
        return err
    return type(err)(err.errno, f"cannot write {path}: {err.strerror or err}")


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename.

    Raises:
        OSError: the write failed (a full disk, say); ``path`` is left as it was.
    """
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, directory: bool = False, what: str = "output") -> None:
    """Fail before any work if ``path`` (a file, or a folder with ``directory``) could not be written.

    Raises:
        ValueError: a file output that is a folder, a device or a FIFO, a folder output that is a file,
            a parent that is a file, or a parent folder this process may not write into.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{what} {path} is a file, not a folder; choose another path")
        if not directory and path.is_dir():
            raise ValueError(f"{what} {path} is a folder; give a file path")
        if os.path.ismount(path):
            raise ValueError(f"{what} {path} is a mount point; it cannot be replaced (choose a path inside a folder)")
        if not directory and not path.is_file():
            # A device or FIFO: --resume would read it without end, and it cannot be replaced atomically.
            raise ValueError(f"{what} {path} is not a regular file (a device or a FIFO); give a file path")
        writable = path if directory else path.parent
    else:
        writable = _nearest_existing(path.parent)
        if not writable.is_dir():
            raise ValueError(f"{what} {path}: {writable} is a file, not a folder")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {writable} is not writable; choose another path or fix its permissions")


def distinct_paths(inputs: Sequence[str | os.PathLike | None], outputs: Sequence[str | os.PathLike | None]) -> None:
    """Refuse an output that is an input or another output (paths compared resolved: symlinks, ``./``).

    Raises:
        ValueError: naming both options' paths.
    """
    seen: dict[Path, str] = {}
    for kind, paths in (("input", inputs), ("output", outputs)):
        for p in paths:
            if p is None:
                continue
            resolved = Path(p).resolve()
            if resolved in seen and seen[resolved] == "output" and kind == "output":
                raise ValueError(f"{p} is given for two outputs of this command; one would replace the other")
            if resolved in seen and "output" in (kind, seen[resolved]):
                raise ValueError(f"{p} is both an input and an output of this command; writing it would replace it")
            seen.setdefault(resolved, kind)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on output ``path`` for the block (a lock file beside it, removed after).

    Raises:
        ValueError: another process holds the lock (another run is writing the same output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise ValueError(
                    f"another run is writing {path} (it holds {lock}); wait for it or choose another output"
                ) from err
            raise
        # The holder before us may have removed the lock file after we opened it: then lock the new one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def run_destination(output: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Where a command writes its run as it goes: ``output`` itself, or, to ``overwrite`` an existing
    file, a hidden sibling that ``swap_in`` moves over it once the new run is complete (the old one
    stays whole until then).

    Raises:
        ValueError: both ``resume`` and ``overwrite``, or an existing ``output`` with neither.
    """
    output = Path(output)
    if resume and overwrite:
        raise ValueError("--resume continues --output and --overwrite replaces it; give one of them")
    if output.exists() and not (resume or overwrite):
        raise ValueError(
            f"{output} exists; pass --resume to continue it, --overwrite to replace it, or choose another --output"
        )
    staging = output.with_name(f".{output.name}.new")
    if staging.exists() and not overwrite:
        # An interrupted --overwrite's unfinished replacement: the run it was for is not being made now.
        log.warning("removing %s, the unfinished replacement of an interrupted --overwrite", staging)
        staging.unlink()
    return staging if overwrite and output.exists() else output


def discard_staging(destination: str | os.PathLike, output: str | os.PathLike) -> None:
    """Delete ``destination`` where it is a hidden replacement of ``output`` (a failed --overwrite leaves nothing)."""
    if Path(destination) != Path(output):
        Path(destination).unlink(missing_ok=True)


def swap_in(fresh: str | os.PathLike, output: str | os.PathLike) -> None:
    """Move the complete file ``fresh`` over ``output`` in one rename, with ``output``'s permission bits."""
    fresh, output = Path(fresh), Path(output)
    if fresh == output:
        return
    os.chmod(fresh, stat.S_IMODE(output.stat().st_mode))
    os.replace(fresh, output)


def replace_folder(fresh: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Put the complete folder ``fresh`` where ``folder`` is: the old one is renamed aside, the new one
    renamed in, then the old one deleted, so that a crash leaves one whole folder (or both) on disk."""
    fresh, folder = Path(fresh), Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(fresh, folder)
    shutil.rmtree(old, ignore_errors=True)


def stem_file(stem: str | os.PathLike, suffix: str) -> Path:
    """``stem`` + ``suffix``: an output stem's file. Not ``Path.with_suffix``, which would cut a stem at
    its last dot (``throughput-llama-3.2-3b`` would write ``throughput-llama-3.json``)."""
    return Path(f"{stem}{suffix}")
