"""The folders ftune writes into, and how it keeps from losing anything in them.

- ftune knows its own folders by a marker it writes when it creates them: `.ftune-run` in a run folder,
  `.ftune-output` in a folder of evaluation results or a merged model. It never deletes, overwrites, resumes into
  or writes into a folder without its marker (an empty or new folder it may claim).
- A run folder in use is locked: `.ftune.lock` holds the process id under an flock held for the run's lifetime,
  so taking the lock is atomic and a lock left by a dead process is free again.
- `--overwrite` never touches the old run until the new one is complete: the new run trains in a staging folder
  beside the target (`.NAME.ftune-staging`), which is exchanged with the target in one rename (renameat2
  RENAME_EXCHANGE where the system has it, else two renames) only after the new run has finished.
- A checkpoint counts only when it is complete: ftune marks each one after the Trainer has written all of it
  (`CheckpointMarker`); a checkpoint without the mark (a kill or a full disk during its save) is torn.

`plan_run_folder` decides, checking only; `claim` then changes the disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from ftune.errors import UsageError

RUN_MARKER = ".ftune-run"
OUTPUT_MARKER = ".ftune-output"
LOCK_FILE = ".ftune.lock"
COMPLETE_MARKER = ".ftune-complete"
FINISHED_FILE = "train_results.json"     # the run's last file: it is finished
CONFIG_FILE = "ftune.yaml"


def is_run_folder(path: Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def is_finished_run(path: Path) -> bool:
    return is_run_folder(path) and (Path(path) / FINISHED_FILE).is_file()


def output_kind(path: Path) -> Optional[str]:
    """What an ftune output folder holds ("eval", "merge"), or None when it is not one."""
    marker = Path(path) / OUTPUT_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text()).get("kind")
    except (ValueError, OSError):
        return None


def _write_marker(path: Path, name: str, **fields) -> None:
    from ftune import __version__

    body = {"ftune": __version__, "created": datetime.now().isoformat(timespec="seconds"), **fields}
    (path / name).write_text(json.dumps(body) + "\n")


def _is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


# --------------------------------------------------------------------------------------------------
# Locks


class FolderLock:
    """An flock on `FOLDER/.ftune.lock`: atomic to take, released by the system when its process dies."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{self.path.parent} is in use by a running ftune process ({_holder(self.path)}); "
                             "wait for it or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def lock_holder(folder: Path) -> Optional[str]:
    """Who holds the folder's lock ("pid N on HOST"), or None when no live process does."""
    import fcntl

    lock = Path(folder) / LOCK_FILE
    if not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
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
    pid, _, host = lock.read_text(errors="replace").strip().partition(" ")
    return f"pid {pid} on {host}" if pid else "another process"


# --------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints(path: Path) -> list[Path]:
    """checkpoint-N folders, oldest first, complete or not."""
    found = [p for p in Path(path).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def mark_complete(checkpoint: Path) -> None:
    """Written after the Trainer has saved every file of the checkpoint."""
    marker = checkpoint / COMPLETE_MARKER
    tmp = checkpoint / (COMPLETE_MARKER + ".tmp")
    tmp.write_text("complete\n")
    tmp.replace(marker)


# --------------------------------------------------------------------------------------------------
# Planning and claiming a run folder


@dataclass
class RunFolderPlan:
    """Where a training run writes. `workdir` is the target itself, or its staging folder under --overwrite."""

    target: Path
    workdir: Path
    staged: bool            # --overwrite: the target is replaced only when the new run has finished
    resume: bool            # continue from the newest complete checkpoint in `workdir`
    clear: bool             # the workdir holds an earlier attempt of ftune's that this run starts over
    created: bool           # the workdir does not exist yet

    @property
    def saved_config(self) -> Optional[Path]:
        """The ftune.yaml of the run being resumed."""
        path = self.workdir / CONFIG_FILE
        return path if self.resume and path.is_file() else None


def staging_path(target: Path) -> Path:
    return target.parent / f".{target.name}.ftune-staging"


def plan_run_folder(target: Path, *, resume: bool, overwrite: bool) -> RunFolderPlan:
    """Decide where the run writes, or raise UsageError saying why it cannot; nothing on disk changes."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"--output-dir {target} is a file; pass a folder")
    if not target.exists() or _is_empty(target):
        return RunFolderPlan(target, target, staged=False, resume=False, clear=False, created=not target.exists())
    if not is_run_folder(target):
        raise UsageError(f"--output-dir {target} holds files ftune did not write (it has no {RUN_MARKER} marker); "
                         "ftune never writes into such a folder: choose a new or empty --output-dir")
    holder = lock_holder(target)
    if holder:
        raise UsageError(f"{target} is in use by a running ftune process ({holder}); wait for it or choose another "
                         "--output-dir")
    if overwrite:
        return _plan_staging(target, resume)
    if is_finished_run(target):
        raise UsageError(f"{target} holds a finished run; pass --overwrite to replace it (the old run stays as it is "
                         "until the new one has finished) or choose another --output-dir")
    if resume:
        return RunFolderPlan(target, target, staged=False, resume=True, clear=False, created=False)
    if checkpoints(target):
        raise UsageError(f"{target} holds an interrupted run with checkpoints; pass --resume to continue it or "
                         "--overwrite to start over")
    # An attempt that stopped before its first checkpoint: nothing to keep, start over in place.
    return RunFolderPlan(target, target, staged=False, resume=False, clear=True, created=False)


def _plan_staging(target: Path, resume: bool) -> RunFolderPlan:
    staging = staging_path(target)
    if not staging.exists():
        return RunFolderPlan(target, staging, staged=True, resume=False, clear=False, created=True)
    if not staging.is_dir() or not is_run_folder(staging):
        raise UsageError(f"{staging} is in the way of --overwrite and ftune did not write it; move it away")
    holder = lock_holder(staging)
    if holder:
        raise UsageError(f"{target} is being replaced by a running ftune process ({holder}); wait for it")
    continues = resume and any(is_complete(c) for c in checkpoints(staging))
    return RunFolderPlan(target, staging, staged=True, resume=continues, clear=not continues, created=False)


def claim(plan: RunFolderPlan, lock: FolderLock) -> None:
    """Make the planned workdir this run's: create it (with the marker), clear an earlier attempt, lock it."""
    workdir = plan.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    if plan.clear:
        for entry in workdir.iterdir():
            if entry.name in (RUN_MARKER, LOCK_FILE):
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if not is_run_folder(workdir):
        _write_marker(workdir, RUN_MARKER)


def drop_torn_checkpoints(workdir: Path) -> list[Path]:
    """Remove checkpoints whose save never completed (ftune wrote them; they cannot be resumed from)."""
    torn = [c for c in checkpoints(workdir) if not is_complete(c)]
    for checkpoint in torn:
        shutil.rmtree(checkpoint)
    return torn


def last_complete_checkpoint(workdir: Path) -> Optional[Path]:
    complete = [c for c in checkpoints(workdir) if is_complete(c)]
    return complete[-1] if complete else None


def swap_into_place(staging: Path, target: Path) -> None:
    """Put the finished staging folder where the target is, in one step where the system allows, then remove the
    old run (it is the folder ftune is replacing, and it carries ftune's marker)."""
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now the old run
        return
    old = target.parent / f".{target.name}.ftune-replaced"
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where not available."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


# --------------------------------------------------------------------------------------------------
# Output folders (evaluation results on other data, merged models)


def prepare_output_folder(path: Path, kind: str, *, overwrite: bool = False, refuse: tuple[Path, ...] = ()) -> Path:
    """Check that ftune may write `kind` output into `path`; returns the folder to build it in.

    A new or empty folder, or an earlier output of the same kind, may be written (an earlier merge only with
    `overwrite`). `refuse`: folders that must never be written or replaced, nor any folder holding one of them.
    Nothing on disk changes here.
    """
    path = Path(path)
    resolved = path.resolve()
    for guarded in refuse:
        guarded = Path(guarded).resolve()
        if resolved == guarded or guarded.is_relative_to(resolved):
            raise UsageError(f"--output-dir {path} is or holds {guarded}, which ftune must not replace; choose "
                             "another folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {path} is a file; pass a folder")
    if not path.exists() or _is_empty(path):
        return path
    if is_run_folder(path):
        raise UsageError(f"--output-dir {path} holds an ftune run; choose another folder")
    found = output_kind(path)
    if found is None:
        raise UsageError(f"--output-dir {path} holds files ftune did not write (no {OUTPUT_MARKER} marker); choose a "
                         "new or empty folder")
    if found != kind:
        raise UsageError(f"--output-dir {path} holds ftune {found} output, not {kind} output; choose another folder")
    if kind == "merge" and not overwrite:
        raise UsageError(f"{path} holds an earlier merged model; pass --overwrite to replace it or choose another "
                         "folder")
    return path


def mark_output(path: Path, kind: str, **fields) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _write_marker(path, OUTPUT_MARKER, kind=kind, **fields)
