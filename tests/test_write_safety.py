"""ftune writes only where it may, and loses nothing of anyone's while it does (ftune.folders).

Racing processes on one new folder: exactly one holds it, the others are refused and change nothing. Links are
resolved, never replaced: a `runs -> elsewhere` link and an --output-dir that links to a run keep working, through
--overwrite too. `predict --output` replaces a file only with --overwrite, never its input, never a file of a run.
A folder that cannot be written is one `error:` line before any data is read. --resume into a folder without a run
starts a new one. The races are decided by barriers, not by timing: each assertion holds for any interleaving.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_errors import assert_usage_error

HELPERS = ROOT / "tests" / "helpers"
STEPS = ["--max-steps", "2", "--batch-size", "8", "--max-length", "32"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.is_symlink()}


def train(tiny_bert, data, output_dir, *extra):
    return invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", output_dir, *STEPS, *extra)


def assert_finished_run(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert {".ftune-run", "ftune.yaml", "split.json", "model.safetensors", "eval_results.json",
            "train_results.json"} <= names, names
    assert ".ftune.lock" not in names and not [n for n in names if n.startswith("checkpoint-")]


def assert_rescores(run: Path) -> None:
    """`ftune eval` reads the run back and gives the figures it recorded."""
    recorded = read_json(run / "eval_results.json")
    rescored = invoke("eval", run)
    assert rescored.exit_code == 0, rescored
    again = read_json(run / "eval_results.json")
    assert again["eval_accuracy"] == recorded["eval_accuracy"] and again["eval_loss"] == pytest.approx(
        recorded["eval_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(40))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert, data):
    """A finished run the tests copy, or read without changing it."""
    run = tmp_path_factory.mktemp("runs") / "finished"
    result = train(tiny_bert, data, run)
    assert result.exit_code == 0, result
    return run


# --------------------------------------------------------------------------------------------------
# Racing for one folder


def fake_finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ".ftune-run").write_text("{}\n")
    (folder / "ftune.yaml").write_text("seed: 1\n")
    (folder / "train_results.json").write_text("{}\n")
    return folder


@pytest.mark.parametrize("case", ["new", "empty", "through-a-link", "overwrite"])
def test_ten_processes_claim_one_folder_exactly_one_holds_it(case, tmp_path):
    """All ten plan the folder as it was, then claim it at once: one wins; nine are refused with a UsageError
    (exit code 2 in the CLI) and leave the winner's folder, and everything else, as it was."""
    parent = tmp_path / "runs"
    parent.mkdir()
    target = parent / "x"
    if case == "empty":
        target.mkdir()
    if case == "through-a-link":
        (tmp_path / "elsewhere").mkdir()
        parent.rmdir()
        parent.symlink_to(tmp_path / "elsewhere")
    if case == "overwrite":
        fake_finished_run(target)
    before = tree_digest(tmp_path)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = [sys.executable, str(HELPERS / "claim_race.py"), str(target), str(barrier), "10"]
    command += ["--overwrite"] if case == "overwrite" else []
    processes = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT) for _ in range(10)]
    try:
        answers = [p.stdout.readline().strip() for p in processes]  # the winner holds the folder meanwhile
        winners = [p for p, answer in zip(processes, answers) if answer == "won"]
        assert len(winners) == 1, answers
        refused = [a for a in answers if a.startswith("refused: ")]
        assert len(refused) == 9, answers
        assert all("in use by a running ftune process" in a or "changed while" in a for a in refused), refused
        held = (tmp_path / "elsewhere" / "x") if case == "through-a-link" else target
        if case == "overwrite":
            held = parent / ".x.ftune-staging"
        assert {p.name for p in held.iterdir()} == {".ftune-run", ".ftune.lock", "owner.txt"}
        assert (held / "owner.txt").read_text() == str(winners[0].pid)
    finally:
        for process in processes:
            process.stdin.close()
            process.wait(timeout=60)
    assert all(p.returncode == 0 for p in processes), [p.stderr.read() for p in processes]
    assert not (held / ".ftune.lock").exists()
    after = tree_digest(tmp_path)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert {name for name in changed if not name.startswith("barrier/")} == {
        str((held / name).relative_to(tmp_path)) for name in (".ftune-run", "owner.txt")}
    if case == "through-a-link":
        assert parent.is_symlink()


def test_a_run_that_claims_after_another_finished_is_refused_and_removes_nothing(tmp_path):
    """Both planned a new folder; the first claims it, finishes and lets go before the second claims: the second is
    refused (the folder holds a finished run now), and the first one's run stays as it is."""
    from ftune.errors import UsageError
    from ftune.folders import claim_run_folder, plan_run_folder

    target = tmp_path / "x"
    first, second = (plan_run_folder(target, resume=False, overwrite=False) for _ in range(2))
    claim = claim_run_folder(first)
    (target / "train_results.json").write_text("{}\n")
    claim.release()
    before = tree_digest(target)
    with pytest.raises(UsageError, match="holds a finished run"):
        claim_run_folder(second)
    assert tree_digest(target) == before and not (target / ".ftune.lock").exists()


def test_undo_removes_only_what_the_claim_made(tmp_path):
    """A run refused after its claim removes what it wrote: a folder it created, else only the files in it."""
    from ftune.folders import claim_run_folder, plan_run_folder

    made = tmp_path / "made"
    claim = claim_run_folder(plan_run_folder(made, resume=False, overwrite=False))
    (made / "ftune.yaml").write_text("seed: 1\n")
    claim.undo()
    assert not made.exists()

    users = tmp_path / "users"  # an empty folder of the user's: it stays, empty
    users.mkdir()
    claim = claim_run_folder(plan_run_folder(users, resume=False, overwrite=False))
    (users / "ftune.yaml").write_text("seed: 1\n")
    claim.undo()
    assert users.is_dir() and not list(users.iterdir())


def test_three_training_runs_into_one_new_folder(tiny_bert, data, tmp_path):
    """Three real `ftune classify` commands into one new folder, each held where it claims the folder until all three
    planned it as new: one run finishes and loads; the other two exit 2 and leave it intact."""
    target = tmp_path / "runs" / "x"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = [sys.executable, str(HELPERS / "train_at_claim_barrier.py"), str(barrier), "3", "classify", "--model",
               str(tiny_bert), "--data", str(data), "--output-dir", str(target), *STEPS]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(3)]
    results = [(p, *p.communicate(timeout=900)) for p in processes]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    for process, _, stderr in results:
        if process.returncode == 2:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), stderr
            assert str(target) in lines[0] or str(target.resolve()) in lines[0], lines[0]
    assert_finished_run(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x"]
    assert_rescores(target)


# --------------------------------------------------------------------------------------------------
# Links


def test_a_linked_runs_folder_keeps_working(tiny_bert, data, tmp_path):
    """`runs -> /scratch/runs` is a normal set-up: the run lands in the real folder and the link stays a link."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    runs = tmp_path / "runs"
    runs.symlink_to(scratch)
    result = train(tiny_bert, data, runs / "a")
    assert result.exit_code == 0, result
    assert runs.is_symlink() and not (runs / "a").is_symlink()
    assert_finished_run(scratch / "a")
    assert sorted(p.name for p in scratch.iterdir()) == ["a"]
    assert_rescores(runs / "a")


def test_overwrite_through_a_linked_output_dir_twice(finished, tiny_bert, data, tmp_path):
    """--overwrite through `out -> real/run`: the run is replaced at the real folder, staged beside it, only when the
    new run has finished; the link stays a link; and the same command works again."""
    real = tmp_path / "real"
    real.mkdir()
    shutil.copytree(finished, real / "run")
    out = tmp_path / "out"
    out.symlink_to(Path("real") / "run")
    old = tree_digest(real / "run")
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *STEPS, "--overwrite"]

    killed = subprocess.run([sys.executable, str(HELPERS / "kill_during_run.py"), "before-swap", "0", *map(str, command),
                             "--seed", "3"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert tree_digest(real / "run") == old  # the new run finished beside it, the old one untouched
    assert (real / ".run.ftune-staging" / "train_results.json").is_file()
    assert out.is_symlink() and os.readlink(out) == str(Path("real") / "run")

    for seed in (7, 8):
        result = invoke(*command, "--seed", seed)
        assert result.exit_code == 0, result
        assert out.is_symlink() and os.readlink(out) == str(Path("real") / "run")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]
        assert sorted(p.name for p in real.iterdir()) == ["run"]  # no staging, no link, no leftover
        assert_finished_run(real / "run")
        saved = (real / "run" / "ftune.yaml").read_text()
        assert f"seed: {seed}" in saved.splitlines()
        assert "ftune-staging" not in saved  # "Rerun with" names the run's own folder, not where it was built
    assert_rescores(out)


def test_resume_of_a_run_from_before_an_option_existed(tiny_bert, data, tmp_path):
    """An interrupted run whose ftune.yaml predates an option (the option is absent) had that option's default:
    --resume continues it, and refuses only when the command asks for another value."""
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, "--max-steps", "4",
               "--eval-steps", "2", "--checkpoint-minutes", "0", "--batch-size", "8", "--max-length", "32"]
    killed = subprocess.run([sys.executable, str(HELPERS / "kill_during_run.py"), "after-checkpoint", "2",
                             *map(str, command)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    config = run / "ftune.yaml"
    lines = config.read_text().splitlines()
    assert "merge_label_variants: false" in lines
    config.write_text("\n".join(line for line in lines if line != "merge_label_variants: false") + "\n")

    other = invoke(*command, "--merge-label-variants", "--resume")
    assert_usage_error(other, "merge_label_variants (run: False, now: True)")
    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0, resumed
    assert "resuming from checkpoint-2" in resumed.stdout
    assert_finished_run(run)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, data):
    run = tmp_path_factory.mktemp("runs") / "lora"
    result = train(tiny_bert, data, run, "--lora")
    assert result.exit_code == 0, result
    return run


def test_merge_overwrite_through_a_linked_output_dir(lora_run, tmp_path):
    """`ftune merge -o link --overwrite` replaces the merged model in the real folder; the link stays a link."""
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "merged"
    out.symlink_to(real / "model")  # leads nowhere until the first merge
    for attempt in range(2):
        result = invoke("merge", lora_run, "--output-dir", out, *(["--overwrite"] if attempt else []))
        assert result.exit_code == 0, result
        assert out.is_symlink() and (real / "model" / "config.json").is_file()
        assert (real / "model" / ".ftune-output").is_file() and not (real / "model" / ".ftune.lock").exists()
        assert sorted(p.name for p in real.iterdir()) == ["model"]
    assert_usage_error(invoke("merge", lora_run, "--output-dir", out), "--overwrite")


# --------------------------------------------------------------------------------------------------
# predict --output


@pytest.fixture
def inputs(tmp_path):
    return write_jsonl(tmp_path / "inputs.jsonl", [{"text": "good movie"}, {"text": "a bad day"}])


def test_predict_replaces_an_existing_file_only_with_overwrite(finished, inputs, tmp_path):
    existing = tmp_path / "mine.csv"
    existing.write_text("my,own\n1,2\n")
    assert_usage_error(invoke("predict", finished, "--input", inputs, "--output", existing), str(existing),
                       "--overwrite")
    assert existing.read_text() == "my,own\n1,2\n"
    replaced = invoke("predict", finished, "--input", inputs, "--output", existing, "--overwrite")
    assert replaced.exit_code == 0, replaced
    assert existing.read_text().splitlines()[0] == "text,label,score"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.jsonl", "mine.csv"]  # nothing left beside it


def test_predict_overwrite_through_a_linked_file_replaces_the_file_it_names(finished, inputs, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("{}\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    result = invoke("predict", finished, "--input", inputs, "--output", link, "--overwrite")
    assert result.exit_code == 0, result
    assert link.is_symlink() and len(read_jsonl(real)) == 2


@pytest.mark.parametrize("how", ["same-path", "link", "hard-link"])
def test_predict_never_writes_over_its_input(how, finished, inputs, tmp_path):
    output = inputs
    if how == "link":
        output = tmp_path / "link.jsonl"
        output.symlink_to(inputs)
    if how == "hard-link":
        output = tmp_path / "hard.jsonl"
        os.link(inputs, output)
    before = inputs.read_bytes()
    assert_usage_error(invoke("predict", finished, "--input", inputs, "--output", output, "--overwrite"),
                       "input file", "not even with --overwrite")
    assert inputs.read_bytes() == before


@pytest.mark.parametrize("name", ["eval_predictions.jsonl", "new.jsonl", "evals/mine.csv"])
def test_predict_never_writes_into_a_run(name, finished, inputs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    link = tmp_path / "link"
    link.symlink_to(run)
    before = tree_digest(run)
    for folder in (run, link):
        assert_usage_error(invoke("predict", run, "--input", inputs, "--output", folder / name, "--overwrite"),
                           "inside", str(run.resolve()))
    assert tree_digest(run) == before


# --------------------------------------------------------------------------------------------------
# Folders that cannot be written


def no_data_read(monkeypatch):
    """Fail the test if the command gets as far as reading data."""
    def prepare(*args, **kwargs):
        raise AssertionError("the data was read before the output folder was checked")

    monkeypatch.setattr("ftune.train.prepare", prepare)
    monkeypatch.setattr("ftune.train.load_held_out_split", prepare)


def test_an_output_dir_under_a_file_is_one_line_before_any_data_is_read(tiny_bert, data, tmp_path, monkeypatch):
    """A parent that is a file: what even root cannot write into."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    no_data_read(monkeypatch)
    assert_usage_error(train(tiny_bert, data, blocker / "run"), str(blocker), "is a file", "--output-dir")
    assert blocker.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its permissions")
def test_an_output_dir_in_a_read_only_folder_is_one_line_before_any_data_is_read(tiny_bert, data, tmp_path,
                                                                                 monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    no_data_read(monkeypatch)
    try:
        assert_usage_error(train(tiny_bert, data, locked / "runs" / "a"), str(locked), "may not write",
                           "--output-dir")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_predict_and_merge_outputs_under_a_file_are_one_line(finished, lora_run, inputs, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    assert_usage_error(invoke("predict", finished, "--input", inputs, "--output", blocker / "p.jsonl"), str(blocker),
                       "is a file")
    assert_usage_error(invoke("merge", lora_run, "--output-dir", blocker / "merged"), str(blocker), "is a file")
    assert_usage_error(invoke("eval", finished, "--output-dir", blocker / "evals", "--data", inputs.parent /
                              "nothing.jsonl"), str(blocker), "is a file")


# --------------------------------------------------------------------------------------------------
# --resume where there is no run yet


@pytest.mark.parametrize("folder", ["new", "empty"])
def test_resume_into_a_folder_without_a_run_starts_one(folder, tiny_bert, data, tmp_path):
    """Requeue scripts pass --resume every time, the first time too."""
    target = tmp_path / "run"
    if folder == "empty":
        target.mkdir()
    result = train(tiny_bert, data, target, "--resume")
    assert result.exit_code == 0, result
    assert "--resume" in result.stderr and "starting a new run" in result.stderr, result
    assert_finished_run(target)
    assert json.loads((target / "train_results.json").read_text())["train_samples"] > 0


def test_a_sweep_folder_is_claimed_once_and_undone_only_for_what_each_process_wrote(tmp_path):
    """Sweeps share their folder on purpose (processes joining one study), so a new sweep claims it by creating the
    marker exclusively, and a refused or failed one removes only the files it wrote that are still its own."""
    from ftune.errors import UsageError
    from ftune.folders import OUTPUT_MARKER, SharedOutput

    folder = tmp_path / "sweep"
    first = SharedOutput(folder, folder)
    first.mark_new("sweep", task="classify")
    assert first.write("split.json", "first\n", replace=False)
    first.write("sweep.yaml", "first\n")
    before = tree_digest(folder)

    second = SharedOutput(folder, folder)  # planned the folder as new before the first one marked it
    with pytest.raises(UsageError, match="claimed by another ftune sweep"):
        second.mark_new("sweep", task="classify")
    assert tree_digest(folder) == before

    joining = SharedOutput(folder, folder)  # --resume: joins, keeps the recorded split, rewrites the recipe
    assert not joining.write("split.json", "joining\n", replace=False)
    joining.write("sweep.yaml", "joining\n")
    first.undo()  # the first sweep failed after the other joined: its marker and split go, the joiner's recipe stays
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.yaml"]
    assert (folder / "sweep.yaml").read_text() == "joining\n" and not (folder / OUTPUT_MARKER).exists()

    alone = tmp_path / "alone"
    claim = SharedOutput(alone, alone)
    claim.mark_new("sweep", task="classify")
    claim.write("split.json", "x\n")
    claim.undo()
    assert not alone.exists()


def test_ftune_runs_sees_a_stopped_replacement_beside_the_real_folder(tmp_path):
    """--overwrite through a link stages beside the folder the link names; `ftune runs` looks there too."""
    from ftune.folders import staging_path
    from ftune.runs import run_status

    real = fake_finished_run(tmp_path / "real" / "run")
    link = tmp_path / "out"
    link.symlink_to(real)
    assert run_status(link) == "finished"
    fake_finished_run(staging_path(real))
    assert run_status(real) == run_status(link) == "finished, replacement stopped"
