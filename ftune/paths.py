"""The mechanics under ftune.folders: how a path on disk is changed without losing what is there.

- Links are resolved first (`resolved`): ftune creates, renames, replaces and deletes real folders and files, never a
  link, so a `runs -> /scratch/runs` link, or an --output-dir that links to a run, keeps working and stays a link.
- A folder is created exclusively (`make_folder`: os.mkdir, never exist_ok) and held by its lock (`FolderLock`), so of
  several processes reaching for one folder exactly one holds it, and the others have changed nothing.
- The lock is an flock on FOLDER/.ftune.lock: atomic to take, freed by the system when its process dies. A holder
  unlinks the file when it lets go, so a taker checks that the file it locked is still the one at the path.
- Folders trade places in one rename (`exchange`: renameat2 RENAME_EXCHANGE) where the system has it.
- A file is written beside its target and renamed in (`publish_file`): nobody sees half of it, and without `replace`
  no file is replaced, not even one that appeared while it was being written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Optional

from ftune.errors import UsageError

LOCK_FILE = ".ftune.lock"


def resolved(path: Path) -> Path:
    """`path`, absolute, with every link on the way resolved (its last part too); a link that leads nowhere gives
    the place it names."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a loop of links
        raise UsageError(f"{path} cannot be resolved ({' '.join(str(exc).split())}); fix the links on its way") \
            from None


def first_existing(path: Path) -> Path:
    """`path` or the nearest of its parents that exists (as a folder or as anything else)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(location: Path, named: Path, flag: str) -> None:
    """Raise UsageError unless `location` (resolved) can be made or written: the nearest existing part of it must be
    a folder this process may create entries in. Root passes any permission bits, but not a file in the way or a
    read-only filesystem."""
    existing = first_existing(location)
    if not existing.is_dir():
        raise UsageError(f"{flag} {named}: {existing} is a file, not a folder, so nothing can be created there; "
                         f"choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {named}: ftune may not write in {existing} (permission denied or read-only); "
                         f"choose a folder you can write to, or change its permissions")


def cannot_write(exc: OSError, named: Path, flag: str) -> UsageError:
    """An OSError from creating a user's path, as the one line ftune reports (the early check may not see all:
    network filesystems, ACLs)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return UsageError(f"{flag} {named}: cannot create {exc.filename or named} ({reason.lower()}); choose a folder "
                      "you can write to")


def make_folder(path: Path, named: Path, flag: str) -> bool:
    """Create `path` (resolved) and any missing parents; True when this call created `path` itself, False when it was
    already there. Creating it is exclusive: of several processes exactly one gets True."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path)
        return True
    except FileExistsError:
        if path.is_dir():
            return False
        raise UsageError(f"{flag} {named}: {path} is a file; pass a folder") from None
    except OSError as exc:
        raise cannot_write(exc, named, flag) from None


# --------------------------------------------------------------------------------------------------
# The folder lock


class FolderLock:
    """An flock on `FOLDER/.ftune.lock`: atomic to take, released by the system when its process dies."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise UsageError saying who holds it; a refused take changes nothing."""
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                raise UsageError(f"{self.path.parent} was removed by another process; run the command again") \
                    from None
            except OSError as exc:
                raise UsageError(f"cannot lock {self.path.parent} ({os.strerror(exc.errno).lower()}); it is not a "
                                 "folder ftune can use") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UsageError(f"{self.path.parent} is in use by a running ftune process ({_holder(self.path)}); "
                                 "wait for it or choose another --output-dir") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder let go and unlinked it between our open and our flock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def moved_to(self, folder: Path) -> None:
        """The locked folder now lives at `folder` (it was renamed while held)."""
        self.path = Path(folder) / LOCK_FILE

    def release(self) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):  # never unlink a lock file that is not the one held
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def lock_holder(folder: Path) -> Optional[str]:
    """Who holds the folder's lock ("pid N on HOST"), or None when no live process does."""
    import fcntl

    lock = Path(folder) / LOCK_FILE
    if not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a lock file left by a dead process
    except BlockingIOError:
        return _holder(lock)
    finally:
        os.close(fd)


def _holder(lock: Path) -> str:
    try:
        pid, _, host = lock.read_text(errors="replace").strip().partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid} on {host}" if pid else "another process"


# --------------------------------------------------------------------------------------------------
# Renames


def _renameat2(a: Path, b: Path, flag: int) -> Optional[bool]:
    """renameat2(a, b, flag): True done, False refused (errno set), None where the system has no renameat2."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return None
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flag) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL):  # a kernel or filesystem without it
        return None
    if error in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    raise OSError(error, os.strerror(error), str(b))


def exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where not available."""
    try:
        return bool(_renameat2(a, b, 2))
    except OSError:
        return False


def move_into_place(source: Path, target: Path) -> bool:
    """Rename `source` to `target`, which must be missing (or, for a folder, an empty folder); False, nothing moved,
    when something else is there by now."""
    if not os.path.lexists(target):
        moved = _renameat2(source, target, 1)  # RENAME_NOREPLACE
        if moved is not None:
            return moved
    elif not (source.is_dir() and target.is_dir() and not target.is_symlink()):
        return False  # a plain rename would replace a file
    try:
        os.rename(source, target)  # onto an empty folder (refused when it is not), or where renameat2 is missing
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            return False
        raise


def remove_folder(path: Path) -> None:
    """Delete a folder of ftune's: first renamed to a name nobody else uses, so no process finds it half deleted."""
    gone = path.parent / f".{path.name}.ftune-removed-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Files


def publish_file(target: Path, write: Callable[[Path], None], *, replace: bool, named: Path, flag: str) -> None:
    """Write a file through `write(path)` beside `target` (resolved) and rename it in once complete. Without
    `replace` an existing `target` is never replaced: UsageError instead, the new file discarded."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".ftune-tmp", dir=target.parent))
    except OSError as exc:
        raise cannot_write(exc, named, flag) from None
    try:
        written = scratch / target.name
        write(written)
        os.chmod(written, 0o666 & ~_umask())
        if replace:
            os.replace(written, target)
            return
        try:
            os.link(written, target)  # fails when a file is there, whoever put it there meanwhile
        except FileExistsError:
            raise UsageError(f"{flag} {named} exists; pass --overwrite to replace it, or choose another file") \
                from None
        except OSError:  # a filesystem without hard links
            if not move_into_place(written, target):
                raise UsageError(f"{flag} {named} exists; pass --overwrite to replace it, or choose another file") \
                    from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
