"""Every write to a path the user named goes through here: run folders, evaluation and merge output folders,
`--output` files. The mechanics (links, exclusive creation, the lock, renames) are ftune.paths.

- Links are resolved first: ftune stages beside the real target and replaces the real target, never a link, so a
  `runs -> /scratch/runs` link, or an --output-dir that links to a run, keeps working and stays a link.
- ftune knows its own folders by a marker it writes when it creates them: `.ftune-run` in a run folder,
  `.ftune-output` in a folder of evaluation results or a merged model. It never deletes, overwrites, resumes into
  or writes into a folder without its marker (an empty or new folder it may claim), and never writes a file the user
  names into one of its own folders.
- Deciding is checking only (`plan_run_folder`, `prepare_output_folder`, `plan_output_file`), before any data is
  read or tokenised, so a folder that cannot be written is one `error:` line. Claiming changes the disk, atomically:
  the folder is created exclusively or locked, and the plan is checked again under the lock (`claim_run_folder`). Of
  several processes reaching for one folder exactly one holds it; the others are refused and have changed nothing.
  A refused or failed command removes only what it made itself (`Claim.undo`).
- A run folder in use is locked: `.ftune.lock` holds the process id under an flock held for the run's lifetime, so
  taking the lock is atomic and a lock left by a dead process is free again.
- `--overwrite` never touches the old run until the new one is complete: the new run trains in a staging folder
  beside the target (`.NAME.ftune-staging`), which is exchanged with the target in one rename (renameat2
  RENAME_EXCHANGE where the system has it, else two renames) only after the new run has finished, while both
  folders' locks are held. A merged model is built and swapped in the same way.
- An existing file named by `--output` is replaced only with `--overwrite`, never while it is also the input.
- A checkpoint counts only when it is complete: ftune marks each one after the Trainer has written all of it
  (`CheckpointMarker`); a checkpoint without the mark (a kill or a full disk during its save) is torn.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Optional

from ftune.errors import RunFailed, UsageError
# The lock lives in ftune.paths; `ftune runs` and the sweeps import it from here with the markers.
from ftune.paths import (LOCK_FILE, FolderLock, check_writable, exchange, lock_holder, make_folder,
                         move_into_place, publish_file, remove_folder, resolved)

RUN_MARKER = ".ftune-run"
OUTPUT_MARKER = ".ftune-output"
COMPLETE_MARKER = ".ftune-complete"
FINISHED_FILE = "train_results.json"     # the run's last file: it is finished
CONFIG_FILE = "ftune.yaml"
# Output kinds that `--overwrite` alone may replace (an evaluation output is rewritten freely), named for messages.
REPLACED_WITH_OVERWRITE_ONLY = {"merge": "merged model", "export": "export"}


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


def _marker_text(**fields) -> str:
    from ftune import __version__

    body = {"ftune": __version__, "created": datetime.now().isoformat(timespec="seconds"), **fields}
    return json.dumps(body) + "\n"


def _write_marker(path: Path, name: str, **fields) -> None:
    (path / name).write_text(_marker_text(**fields))


def _holds_nothing(path: Path) -> bool:
    """A real folder that is empty but for a lock file (that of a process that died before writing anything)."""
    return path.is_dir() and not path.is_symlink() and all(entry.name == LOCK_FILE for entry in path.iterdir())


def _remove_entry(entry: Path) -> None:
    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _ftune_folder_holding(path: Path) -> Optional[Path]:
    """The nearest folder above `path` that ftune wrote (a run, a staging folder, an output folder), or None."""
    for folder in path.parents:
        if (folder / RUN_MARKER).is_file() or (folder / OUTPUT_MARKER).is_file() or \
                ((folder / CONFIG_FILE).is_file() and (folder / FINISHED_FILE).is_file()):
            return folder
    return None


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


def drop_torn_checkpoints(workdir: Path) -> list[Path]:
    """Remove checkpoints whose save never completed (ftune wrote them; they cannot be resumed from)."""
    torn = [c for c in checkpoints(workdir) if not is_complete(c)]
    for checkpoint in torn:
        shutil.rmtree(checkpoint)
    return torn


def last_complete_checkpoint(workdir: Path) -> Optional[Path]:
    complete = [c for c in checkpoints(workdir) if is_complete(c)]
    return complete[-1] if complete else None


# --------------------------------------------------------------------------------------------------
# Claimed folders


class Claim:
    """A folder this process holds under its lock: one it created, or one it found new, empty or ftune's."""

    def __init__(self, path: Path, lock: FolderLock, *, removable: bool):
        self.path, self.lock = path, lock
        self.removable = removable  # undo removes the folder itself (this process created it, or it is staging)

    def moved_to(self, path: Path) -> None:
        """The folder was renamed, still held (swapped into place)."""
        self.path = path
        self.lock.moved_to(path)

    def release(self) -> None:
        self.lock.release()

    def undo(self) -> None:
        """Remove what this process wrote since it claimed the folder, while it still holds it: the folder itself when
        removable, else everything in it (when claimed it held nothing of anyone's, or an attempt of ftune's that this
        process started over)."""
        if not self.lock.held:
            return
        if self.removable:
            remove_folder(self.path)
        else:
            for entry in self.path.iterdir():
                if entry.name != LOCK_FILE:
                    _remove_entry(entry)
        self.lock.release()


def claim_folder(path: Path, named: Path, check: Callable[[], None], *, staging: bool = False) -> Claim:
    """Hold the folder at `path` (resolved): create it exclusively, or take the lock of the one there, then run
    `check` under the lock (it raises UsageError when the folder is no longer what the caller planned for). A refused
    claim leaves nothing of this process's behind."""
    if os.path.islink(path):
        raise UsageError(f"{path} is a link that ftune did not resolve; move it away")
    made = make_folder(path, named, "--output-dir")
    lock = FolderLock(path)
    lock.acquire()  # refused: another process holds the folder, and whatever this one created is the holder's now
    try:
        check()
    except BaseException:
        lock.release()
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only while still empty: another process may have taken it since
        raise
    return Claim(path, lock, removable=made or staging)


# --------------------------------------------------------------------------------------------------
# Run folders


@dataclass
class RunFolderPlan:
    """Where a training run writes. `target` is the --output-dir as named (what messages say), `location` the real
    folder it names (links resolved), `workdir` where the run trains: `location`, or its staging folder under
    --overwrite."""

    target: Path
    location: Path
    workdir: Path
    staged: bool            # --overwrite: the target is replaced only when the new run has finished
    resume: bool            # continue from the newest complete checkpoint in `workdir`
    clear: bool             # the workdir holds an earlier attempt of ftune's that this run starts over
    created: bool           # the workdir does not exist yet
    asked_resume: bool = False
    asked_overwrite: bool = False

    @property
    def decision(self) -> tuple:
        return self.workdir, self.staged, self.resume, self.clear


def staging_path(target: Path) -> Path:
    return target.parent / f".{target.name}.ftune-staging"


def run_workdir(output_dir: Path, *, overwrite: bool) -> Path:
    """The folder a run with this --output-dir trains in (its staging folder under --overwrite), links resolved."""
    location = resolved(Path(output_dir))
    return staging_path(location) if overwrite else location


def plan_run_folder(target: Path, *, resume: bool, overwrite: bool) -> RunFolderPlan:
    """Decide where the run writes, or raise UsageError saying why it cannot; nothing on disk changes."""
    target = Path(target)
    plan = _decide(target, resolved(target), resume=resume, overwrite=overwrite)
    check_writable(plan.workdir, target, "--output-dir")
    return plan


def _decide(target: Path, location: Path, *, resume: bool, overwrite: bool,
            holding: Optional[Path] = None) -> RunFolderPlan:
    """The plan for the folder as it is now; `holding`: a folder whose lock this process holds."""
    def plan(workdir: Path, **decided) -> RunFolderPlan:
        return RunFolderPlan(target, location, workdir, asked_resume=resume, asked_overwrite=overwrite, **decided)

    if location.exists() and not location.is_dir():
        raise UsageError(f"--output-dir {target} is a file; pass a folder")
    if not location.exists() or _holds_nothing(location):
        return plan(location, staged=False, resume=False, clear=False, created=not location.exists())
    if not is_run_folder(location):
        raise UsageError(f"--output-dir {target} holds files ftune did not write (it has no {RUN_MARKER} marker); "
                         "ftune never writes into such a folder: choose a new or empty --output-dir")
    holder = lock_holder(location) if location != holding else None
    if holder:
        raise UsageError(f"{target} is in use by a running ftune process ({holder}); wait for it or choose another "
                         "--output-dir")
    if overwrite:
        return _plan_staging(plan, target, location, resume, holding)
    if is_finished_run(location):
        raise UsageError(f"{target} holds a finished run; pass --overwrite to replace it (the old run stays as it is "
                         "until the new one has finished) or choose another --output-dir")
    if resume:
        return plan(location, staged=False, resume=True, clear=False, created=False)
    if checkpoints(location):
        raise UsageError(f"{target} holds an interrupted run with checkpoints; pass --resume to continue it or "
                         "--overwrite to start over")
    # An attempt that stopped before its first checkpoint: nothing to keep, start over in place.
    return plan(location, staged=False, resume=False, clear=True, created=False)


def _plan_staging(plan, target: Path, location: Path, resume: bool, holding: Optional[Path]) -> RunFolderPlan:
    staging = staging_path(location)
    if not os.path.lexists(staging) or _holds_nothing(staging):
        return plan(staging, staged=True, resume=False, clear=False, created=not staging.exists())
    if staging.is_symlink() or not staging.is_dir() or not is_run_folder(staging):
        raise UsageError(f"{staging} is in the way of --overwrite and ftune did not write it; move it away")
    holder = lock_holder(staging) if staging != holding else None
    if holder:
        raise UsageError(f"{target} is being replaced by a running ftune process ({holder}); wait for it")
    continues = resume and any(is_complete(c) for c in checkpoints(staging))
    return plan(staging, staged=True, resume=continues, clear=not continues, created=False)


def claim_run_folder(plan: RunFolderPlan) -> Claim:
    """Make the planned workdir this run's: created exclusively or locked, and the plan checked again under the lock
    (another run may have claimed, finished or removed the folder while this one prepared); then an earlier attempt
    cleared and the marker written. UsageError when refused, having changed nothing."""
    def unchanged() -> None:
        now = _decide(plan.target, plan.location, resume=plan.asked_resume, overwrite=plan.asked_overwrite,
                      holding=plan.workdir)
        if now.decision != plan.decision:
            raise UsageError(f"{plan.target} changed while this run was preparing (another ftune run used it); run "
                             "the command again, or choose another --output-dir")

    claim = claim_folder(plan.workdir, plan.target, unchanged, staging=plan.staged)
    if plan.clear:
        for entry in plan.workdir.iterdir():
            if entry.name not in (RUN_MARKER, LOCK_FILE):
                _remove_entry(entry)
    if not is_run_folder(plan.workdir):
        _write_marker(plan.workdir, RUN_MARKER)
    return claim


def put_in_place(claim: Claim, plan: RunFolderPlan) -> None:
    """Swap a finished staging run in for the run it replaces, still holding the new run's lock so nobody takes it
    before it is in place."""
    swap_into_place(plan.workdir, plan.location)
    claim.moved_to(plan.location)


def swap_into_place(staging: Path, target: Path) -> None:
    """Put the finished staging folder where the target (resolved) is, in one step where the system allows, then
    remove the old one (it is the folder ftune is replacing, and it carries ftune's marker). The old one's lock is
    held meanwhile: no process is using it."""
    if not os.path.lexists(target):
        if move_into_place(staging, target):
            return
        raise RunFailed(f"{target} appeared while the new one was made; the new one is in {staging}")
    old = FolderLock(target)
    try:
        old.acquire()
    except UsageError:
        raise RunFailed(f"{target} is in use by another ftune process ({lock_holder(target)}), so the finished new "
                        f"one was not put in its place; it is in {staging}") from None
    try:
        if exchange(staging, target):
            remove_folder(staging)  # now the old one
            return
        replaced = target.parent / f".{target.name}.ftune-replaced"
        if replaced.is_dir() and (is_run_folder(replaced) or output_kind(replaced)):
            remove_folder(replaced)  # left by a replacement killed between its two renames
        os.rename(target, replaced)
        os.rename(staging, target)
        remove_folder(replaced)
    finally:
        old.release()  # its file went with the old folder: the new one's lock stays its holder's


# --------------------------------------------------------------------------------------------------
# Output folders (evaluation results on other data, merged models)


def prepare_output_folder(path: Path, kind: str, *, overwrite: bool = False, refuse: Iterable[Path] = ()) -> Path:
    """Check that ftune may write `kind` output into `path`; returns the folder to build it in (as named).

    A new or empty folder, or an earlier output of the same kind, may be written (an earlier merge only with
    `overwrite`). `refuse`: folders that must never be written or replaced, nor any folder holding one of them.
    The folder (or where it would be created) must be writable. Nothing on disk changes here.
    """
    path = Path(path)
    location = resolved(path)
    for guarded in refuse:
        guarded = resolved(Path(guarded))
        if location == guarded or guarded.is_relative_to(location):
            raise UsageError(f"--output-dir {path} is or holds {guarded}, which ftune must not replace; choose "
                             "another folder")
    if location.exists() and not location.is_dir():
        raise UsageError(f"--output-dir {path} is a file; pass a folder")
    check_writable(location, path, "--output-dir")
    if not location.exists() or _holds_nothing(location):
        return path
    if is_run_folder(location):
        raise UsageError(f"--output-dir {path} holds an ftune run; choose another folder")
    found = output_kind(location)
    if found is None:
        raise UsageError(f"--output-dir {path} holds files ftune did not write (no {OUTPUT_MARKER} marker); choose a "
                         "new or empty folder")
    if found != kind:
        raise UsageError(f"--output-dir {path} holds ftune {found} output, not {kind} output; choose another folder")
    if kind in REPLACED_WITH_OVERWRITE_ONLY and not overwrite:
        raise UsageError(f"{path} holds an earlier {REPLACED_WITH_OVERWRITE_ONLY[kind]}; pass --overwrite to replace "
                         "it or choose another folder")
    return path


def check_writable_folder(path: Path, flag: str = "--output-dir") -> None:
    """UsageError unless files can be written into the folder `path` (links resolved), or where it would be made."""
    check_writable(resolved(Path(path)), Path(path), flag)


def mark_output(path: Path, kind: str, **fields) -> None:
    location = resolved(Path(path))
    make_folder(location, Path(path), "--output-dir")
    _write_marker(location, OUTPUT_MARKER, kind=kind, **fields)


class SharedOutput:
    """An output folder several commands may work in together (a sweep's: processes joining one study), claimed for
    a new piece of work by creating its marker exclusively. `undo` removes only the files this process wrote that
    are still the ones it wrote (each file is written whole under a name of its own and renamed in, so another
    process's later version is another file), then the folder when this process created it and it is left empty."""

    def __init__(self, path: Path, named: Path):
        self.path, self.named = resolved(Path(path)), Path(path)
        self.created = make_folder(self.path, self.named, "--output-dir")
        self._written: dict[Path, tuple[int, int]] = {}

    def mark_new(self, kind: str, **fields) -> None:
        """Create the marker, or raise UsageError when another process marked the folder since it was planned."""
        if not self.write(OUTPUT_MARKER, _marker_text(kind=kind, **fields), replace=False):
            self.undo()
            raise UsageError(f"{self.named} was claimed by another ftune {kind} while this one started; pass --resume "
                             "to join it, or choose another --output-dir")

    def write(self, name: str, text: str, *, replace: bool = True) -> bool:
        """Write `name` whole; without `replace`, only when no file of that name is there (False otherwise)."""
        target = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            if replace:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # exclusive: fails when the name exists
                except FileExistsError:
                    return False
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        status = os.stat(target, follow_symlinks=False)
        self._written[target] = (status.st_dev, status.st_ino)
        return True

    def undo(self) -> None:
        for target, identity in self._written.items():
            try:
                status = os.stat(target, follow_symlinks=False)
            except OSError:
                continue
            if (status.st_dev, status.st_ino) == identity:
                target.unlink()
        self._written.clear()
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)  # only when empty: another process may be working in it


def build_output(target: Path, kind: str, **fields) -> Claim:
    """A folder beside `target` (links resolved) to build `kind` output in, held by this process and marked: created,
    or an unfinished build of ftune's taken over. `publish_output` moves it into place."""
    target = Path(target)
    build = staging_path(resolved(target))

    def ours() -> None:
        if not _holds_nothing(build) and output_kind(build) != kind:
            raise UsageError(f"{build} is in the way of --output-dir {target} and ftune did not write it; move it "
                             "away")

    claim = claim_folder(build, target, ours, staging=True)
    for entry in build.iterdir():
        if entry.name != LOCK_FILE:
            _remove_entry(entry)  # an unfinished earlier build
    _write_marker(build, OUTPUT_MARKER, kind=kind, **fields)
    return claim


def publish_output(claim: Claim, target: Path, kind: str) -> None:
    """Put a finished build where `target` (links resolved) is: into a new or empty folder, or in exchange for an
    earlier output of the same kind; UsageError when something else is there by now."""
    location = resolved(Path(target))
    if os.path.lexists(location) and not _holds_nothing(location):
        if output_kind(location) != kind:
            raise UsageError(f"--output-dir {target} was filled by another process meanwhile; choose another folder")
        swap_into_place(claim.path, location)
    elif not move_into_place(claim.path, location):
        raise UsageError(f"--output-dir {target} was filled by another process meanwhile; choose another folder")
    claim.moved_to(location)


# --------------------------------------------------------------------------------------------------
# Output files (--output)


def plan_output_file(path: Path, *, overwrite: bool, inputs: Iterable[Optional[Path]] = (),
                     flag: str = "--output") -> Path:
    """Check that ftune may write the file the user named; returns where it goes (links resolved). Nothing on disk
    changes here. An existing file is replaced only with `overwrite`; never one of `inputs`, nor a file inside a
    folder ftune wrote (a run's own eval_predictions.jsonl, say)."""
    named = Path(path)
    location = resolved(named)
    for source in inputs:
        if source is not None and _same_file(location, Path(source)):
            raise UsageError(f"{flag} {named} is the input file {source}; ftune never writes over its input (not even "
                             f"with --overwrite): choose another {flag} file")
    owner = _ftune_folder_holding(location)
    if owner is not None:
        raise UsageError(f"{flag} {named} is inside {owner}, a folder ftune wrote and keeps as it wrote it; choose a "
                         "file outside it")
    if location.is_dir():
        raise UsageError(f"{flag} {named} is a folder; pass a file name")
    if os.path.lexists(location):
        if not overwrite:
            raise UsageError(f"{flag} {named} exists; pass --overwrite to replace it, or choose another file")
        if not location.is_file():
            raise UsageError(f"{flag} {named} is not a regular file; choose another file")
    check_writable(location.parent, named, flag)
    return location


def write_output_file(location: Path, write: Callable[[Path], None], *, overwrite: bool, named: Path,
                      flag: str = "--output") -> None:
    """Write the file `plan_output_file` allowed: beside it, renamed in once complete (`write(path)` writes it)."""
    publish_file(location, write, replace=overwrite, named=named, flag=flag)


def _same_file(location: Path, source: Path) -> bool:
    other = resolved(source)
    if other == location:
        return True
    try:
        return os.path.samefile(location, other)  # a hard link
    except OSError:
        return False
