"""Run `python -m ftune ARGS`, holding the run at the moment it claims its folder until N runs have reached it.

    python tests/helpers/train_at_claim_barrier.py BARRIER_DIR N classify --output-dir runs/x ...

Every run has then planned its folder (as new, for a new folder) before any of them claims it: the interleaving in
which two commands both decide that the folder is theirs to create.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claim_race import wait_at_barrier  # noqa: E402


def main() -> None:
    barrier, parties = Path(sys.argv[1]), int(sys.argv[2])
    sys.argv = ["ftune", *sys.argv[3:]]
    import ftune.folders

    original = ftune.folders.claim_run_folder

    def claim_run_folder(plan):
        wait_at_barrier(barrier, parties, timeout=600.0)
        return original(plan)

    ftune.folders.claim_run_folder = claim_run_folder
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
