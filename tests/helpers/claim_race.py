"""Claim one run folder from several processes at once, for the race tests.

    python tests/helpers/claim_race.py FOLDER BARRIER_DIR N [--overwrite]

Each process plans the folder, waits at a barrier until all N have planned (so every one of them decided from the
folder as it was before anyone claimed it), then claims it. It prints one line: `won`, `refused: MESSAGE` (a
UsageError) or `failed: ...`. The winner writes `owner.txt` (its pid) into the folder it holds, and holds it until
its stdin closes.
"""

import os
import sys
import time
import traceback
from pathlib import Path


def wait_at_barrier(folder: Path, parties: int, timeout: float = 120.0) -> None:
    """Return once `parties` processes have arrived (each leaves a file in `folder`)."""
    (folder / f"arrived-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("arrived-*"))) < parties:
        if time.monotonic() > deadline:
            raise SystemExit("the other processes never arrived at the barrier")
        time.sleep(0.005)


def main() -> None:
    target, barrier, parties = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    overwrite = "--overwrite" in sys.argv[4:]
    from ftune.errors import UsageError
    from ftune.folders import claim_run_folder, plan_run_folder

    plan = plan_run_folder(target, resume=False, overwrite=overwrite)
    wait_at_barrier(barrier, parties)
    try:
        claim = claim_run_folder(plan)
    except UsageError as exc:
        print(f"refused: {exc}", flush=True)
        return
    except BaseException:
        print("failed: " + " | ".join(traceback.format_exc().splitlines()), flush=True)
        return
    (claim.path / "owner.txt").write_text(str(os.getpid()))
    print("won", flush=True)
    sys.stdin.read()
    claim.release()


if __name__ == "__main__":
    main()
