"""`ftune sweep` refuses bad input with one `error:` line and exit code 2, before anything on disk changes: no sweep
folder is left behind, and an existing sweep stays byte for byte as it was. Also: a recipe's `sweep:` section, and a
`--help` that imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, invoke, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_errors import assert_usage_error, tree_digest
from tests.test_sweep import TRAIN, load_study


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(40))


@pytest.fixture
def sweep_args(tiny_bert, data, tmp_path):
    def args(*extra, out="sweep"):
        return ["sweep", "classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / out, *TRAIN,
                *extra]
    return args


# A time that has passed before the sweep asks for its first trial on any machine (a millisecond had not always: the
# sweep took 1.8-4.6 ms to get there on 2 cores here, so a CPU twice as fast would have started a trial).
NO_TIME = "1e-9"


@pytest.fixture(scope="module")
def started(tmp_path_factory, tiny_bert):
    """A sweep that exists but ran no trial yet (its time was up at once): what --resume continues; and its data."""
    base = tmp_path_factory.mktemp("sweeps")
    data = write_jsonl(base / "data.jsonl", sentiment_rows(40))
    out = base / "started"
    result = invoke("sweep", "classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *TRAIN,
                    "--param", "lr=1e-3..1e-2:log", "--param", "epochs=1,2", "--timeout", NO_TIME)
    assert result.exit_code == 0, result
    return out, data


CASES = {
    "unknown key": (["--param", "batchsize=8,16"], ["no option --batchsize", "did you mean 'batch-size'"]),
    "malformed spec": (["--param", "lr=1e-5...x"], ["malformed range"]),
    "spec without =": (["--param", "lr"], ["--param expects KEY=SPEC"]),
    "unknown modifier": (["--param", "lr=1e-5..1e-3:logg"], ["unknown modifier ':logg'"]),
    "reversed range": (["--param", "lr=1e-3..1e-5"], ["empty or reversed range 0.001..1e-05"]),
    "empty range": (["--param", "warmup=0.1..0.1"], ["empty or reversed range"]),
    "one value": (["--param", "batch-size=16"], ["neither a range", "--batch-size 16"]),
    "one choice twice": (["--param", "batch-size=16,16"], ["lists 16 twice"]),
    "a range of whole numbers with fractions": (["--param", "batch-size=4.5..8"], ["takes whole numbers"]),
    "outside the option's range": (["--param", "lr=0..1e-3"], ["must be above 0"]),
    "a log range from 0": (["--param", "warmup=0..0.1:log"], [":log range needs ends above 0"]),
    "an option that decides the held-out rows": (["--param", "val-fraction=0.1,0.2"], ["cannot be searched"]),
    "nothing to search": ([], ["nothing to search"]),
    "unknown metric": (["--param", "lr=1e-3..1e-2", "--metric", "bleu"], ["--metric bleu", "eval_accuracy, eval_f1"]),
    "no trials": (["--param", "lr=1e-3..1e-2", "--trials", "0"], ["--trials", "at least 1"]),
    "grid over a range": (["--param", "lr=1e-3..1e-2", "--sampler", "grid"], ["--sampler grid needs a list"]),
    "grid shorter than the trials": (["--param", "lr=1e-3,1e-2", "--sampler", "grid", "--trials", "3"],
                                     ["the grid has 2 combinations"]),
    "a value the model cannot take": (["--param", "max-length=16..1024:int"], ["max-length=1024",
                                                                               "above the 512 tokens"]),
    "storage in a missing folder": (["--param", "lr=1e-3..1e-2", "--storage", "sqlite:////no/such/folder/s.db",
                                     "--study-name", "s"], ["cannot open the study storage"]),
    "storage of no known kind": (["--param", "lr=1e-3..1e-2", "--storage", "nosuchdb://host/db", "--study-name", "s"],
                                 ["cannot open the study storage nosuchdb://host/db"]),
    "storage without a study name": (["--param", "lr=1e-3..1e-2", "--storage", "sqlite:///s.db"],
                                     ["--storage needs --study-name"]),
    "several processes per trial": (["--param", "lr=1e-3..1e-2", "--num-processes", "2"], ["--jobs"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_leaves_no_sweep_folder(name, sweep_args, tmp_path):
    extra, fragments = CASES[name]
    before = tree_digest(tmp_path)
    assert_usage_error(invoke(*sweep_args(*extra)), *fragments)
    assert not (tmp_path / "sweep").exists() and tree_digest(tmp_path) == before


def test_optuna_missing_names_the_extra(sweep_args, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    assert_usage_error(invoke(*sweep_args("--param", "lr=1e-3..1e-2")), 'pip install "ftune[sweep]"')
    assert not (tmp_path / "sweep").exists()


def test_a_bad_recipe_section_is_refused(sweep_args, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sweep:\n  params:\n    lr: 1e-3..1e-2\n  trails: 4\n")
    assert_usage_error(invoke(*sweep_args("--config", recipe)), "unknown sweep key 'trails'")
    recipe.write_text("sweep:\n  params:\n    batch-size: [16]\n")
    assert_usage_error(invoke(*sweep_args("--config", recipe)), "at least two values")
    assert not (tmp_path / "sweep").exists()


def test_existing_sweep_needs_resume_and_the_same_command(started, tiny_bert, data):
    started, own_data = started
    before = tree_digest(started)
    command = ["sweep", "classify", "--model", tiny_bert, "--data", own_data, "--output-dir", started, *TRAIN,
               "--param", "lr=1e-3..1e-2:log", "--param", "epochs=1,2"]
    assert_usage_error(invoke(*command), "holds a sweep", "--resume")
    other_space = command[:-4] + ["--param", "lr=1e-4..1e-2:log", "--param", "warmup=0.0..0.1", "--resume"]
    line = assert_usage_error(invoke(*other_space), "--resume would continue")
    assert "--param lr (sweep: 0.001..0.01:log, now: 0.0001..0.01:log)" in line
    assert "--param epochs (sweep: 1,2, now: 1,2)" not in line  # saved parameters fill in what is not given
    assert "--param warmup (sweep: not searched, now: 0..0.1)" in line
    other_option = invoke(*command, "--weight-decay", "0.1", "--resume")
    assert "weight_decay (sweep: 0.0, now: 0.1)" in assert_usage_error(other_option)
    other_task = ["sweep", "lm", "--model", tiny_bert, "--data", data, "--output-dir", started, "--param",
                  "lr=1e-3..1e-2:log", "--resume"]
    assert_usage_error(invoke(*other_task), "task (sweep: classify, now: lm)")
    other_data = [*command[:5], data, *command[6:], "--resume"]
    assert_usage_error(invoke(*other_data), f"data (sweep: '{own_data}', now: '{data}')")
    original = own_data.read_bytes()
    write_jsonl(own_data, sentiment_rows(40, seed=3))  # the same file, other rows
    try:
        assert_usage_error(invoke(*command, "--resume"), "held-out rows of", "differ from the sweep's")
    finally:
        own_data.write_bytes(original)
    assert tree_digest(started) == before


def test_a_recipe_sweep_section_configures_the_sweep(tiny_bert, data, tmp_path, ftune):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_steps: 2\nbatch_size: 8\nmax_length: 16\nsweep:\n  params:\n    lr: 1e-3..1e-2:log\n"
                      "    batch-size: [4, 8]\n  trials: 4\n  metric: accuracy\n  sampler: random\n")
    out = tmp_path / "sweep"
    result = ftune("sweep", "classify", "--model", tiny_bert, "--data", data, "--config", recipe, "--output-dir", out,
                   "--param", "lr=1e-4..1e-3:log", "--timeout", NO_TIME)  # flags win; no time for a trial
    assert result.exit_code == 0, result
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["sweep"]["params"] == {"lr": "0.0001..0.001:log", "batch-size": "4,8"}
    assert (saved["sweep"]["trials"], saved["sweep"]["metric"], saved["sweep"]["sampler"]) == (4, "eval_accuracy",
                                                                                               "random")
    assert saved["max_steps"] == 2 and saved["run"]["task"] == "classify"
    assert read_jsonl(out / "trials.jsonl") == [] and load_study(out).user_attrs["ftune"]["metric"] == "eval_accuracy"
    # A training command reads the same recipe and leaves its sweep section aside.
    trained = ftune("classify", "--model", tiny_bert, "--data", data, "--config", recipe, "--output-dir",
                    tmp_path / "run")
    assert trained.exit_code == 0, trained


def test_sweep_help_imports_nothing_heavy():
    heavy = ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate", "optuna", "matplotlib")
    code = ("import sys\nfrom ftune.cli import app\n"
            "try:\n    app(['sweep', 'classify', '--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--param" in out.stdout and "--trials" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
