"""Pictures in every run: learning curves from the log history (the whole run after --resume), the confusion matrix
of classification (in training and `ftune eval`), linked from the model card; drawing never fails a run; and the
drawing functions the tasks use, each checked on what it draws."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.conftest import invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl

ARGS = ["--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--logging-steps", "2"]
# Imbalanced on purpose (60 / 30 / 15 rows): the confusion matrix then shows shares per class as well.
LABELS = ["negative"] * 4 + ["positive"] * 2 + ["neutral"]


def imbalanced_rows(n: int, seed: int = 0) -> list[dict]:
    rows = sentiment_rows(n, seed=seed, labels=("negative", "positive", "neutral"))
    for i, row in enumerate(rows):
        row["label"] = LABELS[i % len(LABELS)]
    return rows


def png_size(path) -> tuple[int, int]:
    """Width and height of a valid PNG file (PIL checks the file through)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        return image.size


def texts(axes) -> list[str]:
    return [t.get_text() for t in axes.texts]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "reviews.jsonl", imbalanced_rows(105))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, data):
    out = tmp_path_factory.mktemp("runs") / "imbalanced"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, "--epochs", "3",
                    "--val-fraction", "0.3", *ARGS)
    assert result.exit_code == 0, result
    return out


def test_the_run_draws_its_pictures_and_the_model_card_shows_them(run):
    assert png_size(run / "learning_curves.png")[0] >= 800
    assert min(png_size(run / "confusion_matrix.png")) >= 400
    card = (run / "README.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", card)
    assert links == ["learning_curves.png", "confusion_matrix.png"]  # relative: they show wherever the run goes
    assert card.index("## Held-out metrics") < card.index("## Pictures") < card.index("## Use")


def test_learning_curves_draw_the_whole_log_history(run):
    from ftune.pictures import learning_curves_figure

    history = read_json(run / "trainer_state.json")["log_history"]
    figure = learning_curves_figure(history, "f1", True)
    loss, f1 = figure.axes[:2]
    lines = {line.get_label(): line for line in loss.lines + f1.lines}
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [e for e in history if "eval_f1" in e]
    assert list(zip(lines["training loss"].get_xdata(), lines["training loss"].get_ydata())) == losses
    assert list(lines["held-out loss"].get_xdata()) == [e["step"] for e in evals]
    assert list(lines["held-out loss"].get_ydata()) == [e["eval_loss"] for e in evals]
    assert list(lines["held-out f1"].get_ydata()) == [e["eval_f1"] for e in evals]
    best = max(evals, key=lambda e: e["eval_f1"])
    (marked,) = [label for label in lines if label.startswith("best")]
    assert marked == f"best: {best['eval_f1']:.4f} at step {best['step']} (kept)"
    assert [a.get_xlabel() for a in (loss, f1)] == ["optimizer step"] * 2
    assert (loss.get_ylabel(), f1.get_ylabel()) == ("loss", "f1")


def test_the_confusion_matrix_counts_the_held_out_predictions(run):
    from ftune.pictures import confusion_matrix_figure

    predictions = read_jsonl(run / "eval_predictions.jsonl")
    found = read_json(run / "eval_details.json")["confusion_matrix"]
    labels = found["labels"]
    pairs = Counter((p["reference"], p["prediction"]) for p in predictions)
    by_hand = [[pairs[(truth, guess)] for guess in labels] for truth in labels]
    assert found["matrix"] == by_hand

    figure = confusion_matrix_figure(labels, found["matrix"])
    counts, shares = figure.axes  # imbalanced classes: the shares of each reference class too
    assert texts(counts) == [str(c) for row in by_hand for c in row]
    assert texts(shares) == [f"{c / sum(row):.2f}" for row in by_hand for c in row]
    for panel in (counts, shares):
        assert [t.get_text() for t in panel.get_xticklabels()] == labels
        assert [t.get_text() for t in panel.get_yticklabels()] == labels
        assert (panel.get_xlabel(), panel.get_ylabel()) == ("predicted", "reference (true)")


def test_balanced_classes_get_the_counts_only():
    from ftune.pictures import confusion_matrix_figure

    figure = confusion_matrix_figure(["a", "b"], [[9, 1], [2, 8]])
    (counts,) = figure.axes
    assert texts(counts) == ["9", "1", "2", "8"]


def test_eval_draws_the_confusion_matrix_of_other_data(run, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", imbalanced_rows(14, seed=4))
    out = tmp_path / "scored"
    result = invoke("eval", run, "--data", other, "--output-dir", out)
    assert result.exit_code == 0, result
    assert f"drew {out / 'confusion_matrix.png'}" in result.stdout
    png_size(out / "confusion_matrix.png")
    assert sum(map(sum, read_json(out / "eval_details.json")["confusion_matrix"]["matrix"])) == 14


def test_a_picture_that_fails_is_one_warning_and_the_run_finishes(tiny_bert, data, tmp_path, monkeypatch):
    import ftune.pictures

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas\nat all")

    monkeypatch.setattr(ftune.pictures, "confusion_matrix_figure", broken)
    out = tmp_path / "run"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, "--max-steps", "2", *ARGS)
    assert result.exit_code == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: could not draw confusion_matrix.png (RuntimeError: no canvas at all); the run "
                        "itself is not affected"]
    assert (out / "train_results.json").is_file() and (out / "learning_curves.png").is_file()
    assert not list(out.glob("confusion_matrix.png*"))
    card = (out / "README.md").read_text()
    assert "learning_curves.png" in card and "confusion_matrix" not in card


def test_after_resume_the_curves_cover_the_whole_run(tiny_bert, data, tmp_path, monkeypatch):
    import ftune.pictures
    from tests.test_safety import killed

    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, "--max-steps", "8",
               "--eval-steps", "2", "--checkpoint-minutes", "0", *ARGS, "--logging-steps", "1"]
    killed("after-checkpoint", 4, *command)
    drawn = []
    original = ftune.pictures.learning_curves_figure

    def recording(history, *args):
        drawn.append(history)
        return original(history, *args)

    monkeypatch.setattr(ftune.pictures, "learning_curves_figure", recording)
    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0 and "resuming from checkpoint-4" in resumed.stdout, resumed
    (history,) = drawn
    assert sorted({e["step"] for e in history if "loss" in e}) == list(range(1, 9))
    assert [e["step"] for e in history if "eval_f1" in e] == [2, 4, 6, 8]
    assert history == read_json(run / "trainer_state.json")["log_history"]
    png_size(run / "learning_curves.png")


# --------------------------------------------------------------------------------------------------
# The drawing functions other tasks use (ner: a score per entity type; regression: predicted vs true)


def test_label_scores_draw_one_bar_per_label(tmp_path):
    from ftune.pictures import label_scores_picture
    from ftune.rundir import RunDir

    picture = label_scores_picture("entity_f1.png", "F1 per entity type", {"PER": 0.91, "LOC": 0.5, "ORG": 0.0},
                                   "f1", support={"PER": 12, "LOC": 4, "ORG": 1})
    figure = picture.draw()
    (axes,) = figure.axes
    assert [round(bar.get_width(), 6) for bar in axes.patches] == [0.91, 0.5, 0.0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["PER", "LOC", "ORG"]
    assert texts(axes) == [" 0.910  (n=12)", " 0.500  (n=4)", " 0.000  (n=1)"]
    RunDir(tmp_path).write_picture(picture.file, figure)
    png_size(tmp_path / "entity_f1.png")


def test_predicted_vs_true_draws_a_point_per_row(tmp_path):
    from ftune.pictures import predicted_vs_true_figure
    from ftune.rundir import RunDir

    truth, guess = [1.0, 2.0, 3.5, 5.0], [1.2, 1.8, 3.0, 5.5]
    figure = predicted_vs_true_figure(truth, guess, "rating")
    (axes,) = figure.axes
    assert axes.collections[0].get_offsets().tolist() == [list(p) for p in zip(truth, guess)]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("true rating", "predicted rating")
    RunDir(tmp_path).write_picture("scatter.png", figure)
    png_size(tmp_path / "scatter.png")
    with pytest.raises(ValueError):
        predicted_vs_true_figure([1.0], [1.0, 2.0])


def test_a_log_history_without_losses_is_refused():
    from ftune.pictures import learning_curves_figure

    with pytest.raises(ValueError, match="no loss"):
        learning_curves_figure([{"step": 1, "learning_rate": 0.1}], "f1", True)



def test_a_task_that_fails_to_name_its_pictures_costs_a_warning(capsys):
    from ftune.pictures import task_pictures
    from ftune.tasks.base import Evaluation
    from ftune.tasks.classify import TASK, ClassifyState

    evaluation = Evaluation(metrics={}, predictions=[], details={"confusion_matrix": {"labels": ["a"]}})
    state = ClassifyState(columns={"text": "text", "text_pair": None, "label": "label"}, labels=["a"])
    assert task_pictures(TASK, None, state, evaluation) == []
    assert capsys.readouterr().err == ("warning: could not draw the classify pictures (KeyError: 'matrix'); the run "
                                       "itself is not affected\n")


def test_with_the_loss_as_main_metric_one_panel_marks_the_best_held_out_loss():
    from ftune.pictures import learning_curves_figure

    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5},
               {"step": 4, "loss": 1.5}, {"step": 4, "eval_loss": 2.7}, {"step": 4, "train_loss": 2.1}]
    (loss,) = learning_curves_figure(history, "loss", False).axes[:1]
    labels = [line.get_label() for line in loss.lines]
    assert labels == ["training loss", "held-out loss", "best: 2.5000 at step 2 (kept)"]
    assert list(loss.lines[0].get_xdata()) == [1, 2, 4]
