"""Two `ftune sweep` processes on one PostgreSQL study, for real: a PostgreSQL server started for the test, one sweep
killed with kill -9 in the middle of a trial. The other marks the dead trial failed once its heartbeat is older than
the grace period (Optuna's RDBStorage heartbeat), takes its place, and the study ends with exactly --trials finished
trials, no trial number or folder used twice.

Skipped, saying why, where PostgreSQL's `initdb`/`pg_ctl` or the psycopg2 driver is missing. The server listens only
on a socket in a folder of its own (no TCP port to collide with), run as the current user, or as `nobody` under root
(PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_sweep import SPACE, TRAIN

HEARTBEAT = ROOT / "tests" / "helpers" / "short_heartbeat_sweep.py"
TRIALS = 2
INTERVAL_S, GRACE_S = 1, 8   # the heartbeat in these sweeps (ftune's own: 10 and 120 s)


def _server_user() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user it accepts."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("runuser"):
        pytest.skip("running as root without runuser: PostgreSQL's server refuses to run as root")
    return ["runuser", "-u", "nobody", "--"]


@pytest.fixture(scope="module")
def postgres():
    """The URL of an empty database on a PostgreSQL server of the test's own."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not on PATH (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is not installed (pip install "
                                            "psycopg2-binary)")
    import psycopg2

    as_user = _server_user()
    # Not under pytest's folder, which only its owner may enter: the server's user works in this one.
    folder = Path(tempfile.mkdtemp(prefix="ftune-pg-"))
    if as_user:
        shutil.chown(folder, "nobody")
    data, log = folder / "data", folder / "server.log"
    try:
        subprocess.run([*as_user, "initdb", "-D", str(data), "-U", "ftune", "--auth=trust"], check=True,
                       capture_output=True)
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-o",
                        f"-k {folder} -c listen_addresses=''", "start"], check=True, capture_output=True)
        try:
            connection = psycopg2.connect(host=str(folder), user="ftune", dbname="postgres")
            connection.autocommit = True
            connection.cursor().execute("CREATE DATABASE sweeps")
            connection.close()
            yield f"postgresql+psycopg2://ftune@/sweeps?host={folder}"
        finally:
            subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(48))


def test_a_sweep_killed_mid_trial_leaves_its_trial_to_the_others_heartbeat_check(postgres, tiny_bert, data, tmp_path):
    victim_dir, survivor_dir = tmp_path / "machine-a", tmp_path / "machine-b"
    hold = tmp_path / "held"

    def start(folder: Path, held: str) -> subprocess.Popen:
        command = [sys.executable, str(HEARTBEAT), str(INTERVAL_S), str(GRACE_S), held, "sweep", "classify",
                   "--model", str(tiny_bert), "--data", str(data), "--output-dir", str(folder), *TRAIN, *SPACE,
                   "--trials", str(TRIALS), "--seed", "42", "--storage", postgres, "--study-name", "shared"]
        with (tmp_path / f"{folder.name}.log").open("w") as log:
            return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    victim = start(victim_dir, str(hold))
    survivor = start(survivor_dir, "-")
    # The victim holds its first trial at that trial's first evaluation: it is mid-run when the kill comes.
    while not hold.exists():
        assert victim.poll() is None, (tmp_path / "machine-a.log").read_text()[-3000:]
        time.sleep(0.2)
    killed = int(hold.read_text())
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert survivor.wait() == 0, (tmp_path / "machine-b.log").read_text()[-3000:]

    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = {t.number: t for t in study.trials}
    assert trials[killed].state.name == "FAIL" and list(trials[killed].intermediate_values) == [1]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials.values()) == TRIALS
    output = (tmp_path / "machine-b.log").read_text()
    assert f"trial {killed} (pid {victim.pid} on " in output
    assert f"has had no heartbeat for {GRACE_S} s: marked failed" in output
    # Every trial that ran has a folder in exactly one sweep folder: the one of the process that ran it.
    ran = {t.number: Path(t.user_attrs["worker"]["folder"]) for t in trials.values() if "surplus" not in t.user_attrs}
    folders = {folder: {int(p.name.split("-")[1]) for p in folder.glob("trial-*")} for folder in (victim_dir,
                                                                                                   survivor_dir)}
    assert not folders[victim_dir] & folders[survivor_dir]
    assert {n: folder.resolve() for folder, numbers in folders.items() for n in numbers} == \
        {n: folder.resolve() for n, folder in ran.items()}
    assert folders[victim_dir] == {killed}
    rows = {r["number"]: r for r in read_jsonl(survivor_dir / "trials.jsonl")}
    assert (rows[killed]["state"], rows[killed]["error"]) == ("failed", "interrupted")
    assert sorted(n for n, r in rows.items() if r["state"] in ("complete", "pruned")) == \
        sorted(n for n, t in trials.items() if t.state.name in ("COMPLETE", "PRUNED"))
