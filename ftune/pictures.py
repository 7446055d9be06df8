"""The pictures of a run: learning curves for every task, and what a task adds (classify: a confusion matrix).

The drawing functions are pure: data in, a matplotlib `Figure` out. They use matplotlib's object API, whose
figures render with the Agg canvas, so nothing touches pyplot, a global backend or a display. A `Picture` names a
file and holds the drawing, unevaluated; `draw_pictures` writes each one, and a picture that cannot be drawn costs
a one-line warning, never the run.

How a task adds its own pictures: `Task.pictures(config, state, evaluation)` returns a list of `Picture`s built
from the evaluation's `details` (per-class figures, a confusion matrix) or its `predictions` (prediction and
reference per row), e.g. `confusion_matrix_picture`, `label_scores_picture`, `predicted_vs_true_picture`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from ftune import console

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"

DPI = 110
LONGEST_TICK_LABEL = 18       # characters of a class name shown on an axis
MOST_ANNOTATED_CLASSES = 25   # above this a confusion matrix shows colours only: the numbers would not fit
IMBALANCE_RATIO = 1.5         # largest / smallest class: from here on the row-normalised view is drawn too


@dataclass(frozen=True)
class Picture:
    """A picture of a run: its file name, its caption in the model card, and how to draw it."""

    file: str
    caption: str
    draw: Callable[[], Any]   # returns a matplotlib Figure


def draw_pictures(folder, pictures: Sequence[Picture]) -> list[Picture]:
    """Write each picture into `folder` (a RunDir); return those written. A failure is one warning line."""
    written = []
    for picture in pictures:
        try:
            folder.write_picture(picture.file, picture.draw())
        except Exception as exc:  # noqa: BLE001 — a picture must never make a run fail
            _warn(f"could not draw {picture.file}", exc)
            continue
        written.append(picture)
    return written


def task_pictures(task, config, state, evaluation) -> list[Picture]:
    """The task's own pictures of `evaluation` (Task.pictures); a task that fails to name them costs a warning."""
    try:
        return list(task.pictures(config, state, evaluation))
    except Exception as exc:  # noqa: BLE001 — as in draw_pictures
        _warn(f"could not draw the {task.name} pictures", exc)
        return []


def _warn(what: str, exc: Exception) -> None:
    text = " ".join(str(exc).split()) or type(exc).__name__
    console.warn(f"{what} ({type(exc).__name__}: {text}); the run itself is not affected")


# --------------------------------------------------------------------------------------------------
# The pictures


def learning_curves_picture(log_history: list[dict], metric: str, greater_is_better: bool,
                            also: Sequence[str] = ()) -> Picture:
    """Training and held-out loss, the held-out `metric`, and the further metrics `also` (a task's `curve_metrics`),
    against the optimizer step."""
    shown = [name for name in (metric, *also) if name != "loss"]
    caption = "Learning curves: training and held-out loss" + "".join(f", held-out {name}" for name in shown)
    return Picture(LEARNING_CURVES, caption,
                   functools.partial(learning_curves_figure, log_history, metric, greater_is_better, also))


def confusion_matrix_picture(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Picture:
    """Counts of reference (rows) against predicted class (columns) over the held-out rows."""
    return Picture(CONFUSION_MATRIX, "Confusion matrix of the held-out rows",
                   functools.partial(confusion_matrix_figure, labels, matrix))


def label_scores_picture(file: str, caption: str, scores: Mapping[str, float], metric: str,
                         support: Optional[Mapping[str, int]] = None) -> Picture:
    """One bar per label (entity type, class), e.g. the F1 of each entity type."""
    return Picture(file, caption, functools.partial(label_scores_figure, scores, metric, support, caption))


def predicted_vs_true_picture(file: str, caption: str, references: Sequence[float],
                              predictions: Sequence[float], quantity: str = "value") -> Picture:
    """A scatter of predicted against true values, for regression."""
    return Picture(file, caption, functools.partial(predicted_vs_true_figure, references, predictions, quantity))


def histogram_picture(file: str, caption: str, values: Sequence[float], quantity: str,
                      threshold: Optional[float] = None) -> Picture:
    """How one value spreads over the held-out rows, e.g. each preference pair's reward margin."""
    return Picture(file, caption, functools.partial(histogram_figure, values, quantity, threshold))


# --------------------------------------------------------------------------------------------------
# Drawing: data in, a Figure out


def learning_curves_figure(log_history: list[dict], metric: str, greater_is_better: bool, also: Sequence[str] = ()):
    """The training and held-out loss; then a panel for the held-out `metric`, its best value marked (the model ftune
    keeps), and one for each metric in `also` the log history holds — each with its training-batch values when the
    log history has them under the same name. With `metric` "loss" the best held-out loss is marked in the loss
    panel. Raises ValueError when there is nothing to draw."""
    train = _series(log_history, "loss")
    held_out = _series(log_history, "eval_loss")
    if not train[0] and not held_out[0]:
        raise ValueError("the log history holds no loss")
    further = [(name, name == metric) for name in dict.fromkeys((metric, *also)) if name != "loss"]
    further = [(name, best) for name, best in further if _series(log_history, f"eval_{name}")[0]]
    panels = 1 + len(further)
    figure = _figure(width=5.2 * panels + 0.6, height=4.2)
    axes = figure.subplots(1, panels, squeeze=False)[0]

    loss = axes[0]
    if train[0]:
        loss.plot(*train, color="tab:blue", marker="." if len(train[0]) < 40 else None, label="training loss")
    if held_out[0]:
        loss.plot(*held_out, color="tab:orange", marker="o", label="held-out loss")
        if metric == "loss":
            _mark_best(loss, held_out, greater_is_better)
    _label(loss, "Loss", "loss")

    for panel, (name, best) in zip(axes[1:], further):
        trained = _series(log_history, name)  # the same figure on the training batches, where the Trainer logs it
        if trained[0]:
            panel.plot(*trained, color="tab:blue", marker="." if len(trained[0]) < 40 else None,
                       label=f"training {name}")
        scores = _series(log_history, f"eval_{name}")
        panel.plot(*scores, color="tab:green", marker="o", label=f"held-out {name}")
        if best:
            _mark_best(panel, scores, greater_is_better)
        _label(panel, f"Held-out {name}", name)

    epochs_per_step = _epochs_per_step(log_history)
    for panel in axes:
        panel.legend(loc="best")
        _epoch_axis(panel, epochs_per_step)
    figure.suptitle("Learning curves")
    return figure


def confusion_matrix_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]]):
    """Counts per reference (rows) and predicted class (columns), numbers in the cells; when the classes are
    imbalanced, a second panel with each reference row as shares, which a large class cannot drown."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape != (len(labels), len(labels)):
        raise ValueError(f"a confusion matrix of {len(labels)} classes must be {len(labels)} x {len(labels)}, "
                         f"got {counts.shape}")
    support = counts.sum(axis=1)
    present = support[support > 0]
    imbalanced = len(present) > 1 and present.max() >= IMBALANCE_RATIO * present.min()
    side = min(14.0, max(4.2, 0.55 * len(labels) + 2.4))
    panels = 2 if imbalanced else 1
    figure = _figure(width=side * panels, height=side)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    names = [_short(name) for name in labels]

    _matrix_panel(figure, axes[0], counts.astype(float), names, [[str(c) for c in row] for row in counts],
                  "counts")
    if imbalanced:
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = counts / support[:, None]
        text = [[f"{v:.2f}" if math.isfinite(v) else "" for v in row] for row in shares]
        _matrix_panel(figure, axes[1], np.nan_to_num(shares), names, text, "share of each reference class")
    figure.suptitle(f"Confusion matrix ({int(counts.sum()):,} held-out rows)")
    return figure


def label_scores_figure(scores: Mapping[str, float], metric: str, support: Optional[Mapping[str, int]] = None,
                        title: Optional[str] = None):
    """Horizontal bars, one per label, in the order given, each with its value (and support when given)."""
    if not scores:
        raise ValueError("no labels to draw")
    names = list(scores)
    values = [float(scores[name]) for name in names]
    figure = _figure(width=7.0, height=min(16.0, max(3.0, 0.4 * len(names) + 1.6)))
    axes = figure.subplots()
    positions = list(range(len(names)))
    axes.barh(positions, values, color="tab:blue")
    axes.set_yticks(positions, [_short(n) for n in names])
    axes.invert_yaxis()  # the first label on top
    for y, (name, value) in enumerate(zip(names, values)):
        note = f"{value:.3f}" + (f"  (n={support[name]})" if support and name in support else "")
        axes.text(value, y, " " + note, va="center", fontsize=9)
    if all(0.0 <= v <= 1.0 for v in values):
        axes.set_xlim(0.0, 1.18)  # room for the numbers right of a full bar
    axes.set_xlabel(metric)
    axes.set_title(title or f"{metric} per label")
    axes.grid(axis="x", alpha=0.3)
    return figure


def predicted_vs_true_figure(references: Sequence[float], predictions: Sequence[float], quantity: str = "value"):
    """Each row as a point (true, predicted), with the diagonal where a perfect model puts them all."""
    if len(references) != len(predictions) or not references:
        raise ValueError(f"need as many predictions as references, and some: {len(predictions)} and "
                         f"{len(references)}")
    truth, guess = [float(v) for v in references], [float(v) for v in predictions]
    low, high = min(truth + guess), max(truth + guess)
    margin = (high - low) * 0.05 or 0.5
    figure = _figure(width=5.4, height=5.0)
    axes = figure.subplots()
    axes.scatter(truth, guess, s=14, alpha=max(0.15, min(0.8, 200 / len(truth))), color="tab:blue",
                 label="held-out rows")
    axes.plot([low - margin, high + margin], [low - margin, high + margin], color="grey", linestyle="--",
              label="prediction = true")
    axes.set_xlim(low - margin, high + margin)
    axes.set_ylim(low - margin, high + margin)
    axes.set_aspect("equal")
    axes.set_xlabel(f"true {quantity}")
    axes.set_ylabel(f"predicted {quantity}")
    axes.set_title(f"Predicted vs true ({len(truth):,} held-out rows)")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    return figure


def histogram_figure(values: Sequence[float], quantity: str, threshold: Optional[float] = None):
    """The distribution of one value over the held-out rows (e.g. each pair's reward margin); a dashed line at
    `threshold`, with the share of rows above it."""
    if not values:
        raise ValueError(f"no {quantity} to draw")
    numbers = [float(v) for v in values if math.isfinite(v)]
    figure = _figure(width=6.0, height=4.2)
    axes = figure.subplots()
    axes.hist(numbers, bins=min(40, max(5, int(math.sqrt(len(numbers))) * 2)), color="tab:blue", alpha=0.8)
    if threshold is not None:
        above = sum(v > threshold for v in numbers) / max(len(numbers), 1)
        axes.axvline(threshold, color="grey", linestyle="--", label=f"{above:.1%} of the rows above {threshold:g}")
        axes.legend(loc="best")
    axes.set_xlabel(quantity)
    axes.set_ylabel("held-out rows")
    axes.set_title(f"The {quantity} of each held-out row ({len(numbers):,} rows)")
    axes.grid(alpha=0.3)
    return figure


# --------------------------------------------------------------------------------------------------
# Helpers


def _figure(width: float, height: float):
    import logging
    import os

    if not os.environ.get("FTUNE_DEBUG"):
        # e.g. "building the font cache" on a first run: ftune's output stays its own (as with the other libraries)
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in the log history, non-finite values left out."""
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def _epochs_per_step(log_history: list[dict]) -> Optional[float]:
    """The epoch count per optimizer step, from the last entry that has both."""
    for entry in reversed(log_history):
        if entry.get("step") and isinstance(entry.get("epoch"), (int, float)):
            return float(entry["epoch"]) / float(entry["step"])
    return None


def _mark_best(axes, series: tuple[list[int], list[float]], greater_is_better: bool) -> None:
    """A star on the best evaluation: the one whose model ftune keeps (the first of equals)."""
    steps, values = series
    pick = max if greater_is_better else min
    best = pick(range(len(values)), key=lambda i: values[i])
    axes.plot([steps[best]], [values[best]], marker="*", markersize=16, color="tab:red", linestyle="none",
              label=f"best: {values[best]:.4f} at step {steps[best]} (kept)")


def _label(axes, title: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _epoch_axis(axes, epochs_per_step: Optional[float]) -> None:
    """A second x axis on top that reads the steps as epochs."""
    if not epochs_per_step:
        return
    top = axes.secondary_xaxis("top", functions=(lambda s: s * epochs_per_step, lambda e: e / epochs_per_step))
    top.set_xlabel("epoch")


def _matrix_panel(figure, axes, values, names: list[str], text: list[list[str]], title: str) -> None:
    image = axes.imshow(values, cmap="Blues", vmin=0.0)
    ticks = list(range(len(names)))
    tilted = len(names) > 3 or max(map(len, names)) > 8
    axes.set_xticks(ticks, names, rotation=45 if tilted else 0, ha="right" if tilted else "center",
                    rotation_mode="anchor")
    axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference (true)")
    axes.set_title(title)
    if len(names) > MOST_ANNOTATED_CLASSES:
        figure.colorbar(image, ax=axes, shrink=0.8)
        return
    dark = values.max() / 2 if values.max() > 0 else 1.0
    for i, row in enumerate(text):
        for j, cell in enumerate(row):
            axes.text(j, i, cell, ha="center", va="center", fontsize=10 if len(names) <= 10 else 7,
                      color="white" if values[i, j] > dark else "black")


def _short(name: Any) -> str:
    text = str(name)
    return text if len(text) <= LONGEST_TICK_LABEL else text[:LONGEST_TICK_LABEL - 1] + "…"
