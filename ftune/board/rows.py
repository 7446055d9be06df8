"""A run's held-out rows for the Errors page: each line of `eval_predictions.jsonl` joined with the held-out input
row it scored, what "wrong" means for the run's task, and the filters, sorts and pages the page asks for.

The input rows are read from the run's data through its `split.json`, as `ftune eval` reads them
(`ftune.data.reload_held_out_split`: the same rows, or a one-line reason when the data is gone or changed; the page
then shows the lines without their text). Which fields of a row are its input is what `ftune serve` says the run
takes (`ftune.serve.predict.input_fields`). Per task:
- classify: wrong = prediction != reference (multi-label: the label sets differ); score = the predicted label's
  probability, as the line records it; regression rows are never wrong and sort by their squared error (loss);
- ner: wrong = a sentence with any tag wrong; score = the least confident word's probability; the gold and
  predicted entities as word offsets;
- qa: wrong = no exact match (SQuAD normalisation, any gold answer); score = the span's probability; the gold spans
  and the predicted span as character offsets in the context;
- summarize / translate: each row's ROUGE-L / chrF (0-100) computed here from the line; wrong = below the median
  row of the run;
- lm: each row's mean token loss; wrong = above the median row;
- dpo: wrong = the policy prefers the rejected answer (prediction != reference); score = the reward margin's size.

A run's rows are built once and kept in memory until one of the files they come from changes (their sizes and
modification times are the key; the last `KEPT_EVALUATIONS` evaluations used are kept), so paging through 100k rows
does not read them again.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

from ftune.board.index import BoardError, file_stamp
from ftune.folders import CONFIG_FILE
from ftune.rundir import EVAL_PREDICTIONS, SPLIT_FILE

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
SORTS = ("id", "confidence", "loss", "score", "length")


@dataclass
class HeldOutRows:
    """Every held-out row of one evaluation, as the rows endpoint shows them, with what filtering needs."""

    task: str
    wrong_means: str
    columns: list[str]                      # the input fields shown as each row's text
    rows: list[dict[str, Any]]
    text_missing: Optional[str] = None      # why the input rows could not be read (then every row's text is null)
    _search: Optional[list[str]] = field(default=None, repr=False)

    @cached_property
    def sortable(self) -> list[str]:
        found = ["id", "length"]
        for sort in ("confidence", "loss", "score"):
            if any(sort_value(row, sort) is not None for row in self.rows):
                found.append(sort)
        return found

    def search_text(self, index: int) -> str:
        if self._search is None:
            self._search = [_haystack(row) for row in self.rows]
        return self._search[index]


# ---- building -------------------------------------------------------------------------------------


KEPT_EVALUATIONS = 16            # the rows of this many evaluations stay in memory, the last used ones
_CACHE: OrderedDict[Path, tuple[tuple, HeldOutRows]] = OrderedDict()
_CACHE_LOCK = threading.Lock()   # held while rows are built, so two first requests build them once


def held_out_rows(run, folder: Path) -> HeldOutRows:
    """The rows of the evaluation in `folder` (the run itself, or RUN/evals/NAME) of `run` (a FinishedRun)."""
    stamp = _stamp(folder, run)
    with _CACHE_LOCK:
        cached = _CACHE.get(folder)
        if cached is None or cached[0] != stamp:
            cached = (stamp, build_rows(run, folder))
        _CACHE[folder] = cached
        _CACHE.move_to_end(folder)
        while len(_CACHE) > KEPT_EVALUATIONS:
            _CACHE.popitem(last=False)
        return cached[1]


def _stamp(folder: Path, run) -> tuple:
    """What the rows come from, as modification times and sizes: the lines, the split, the options, the data."""
    from ftune.data import held_out_source

    files = [folder / EVAL_PREDICTIONS, run.path / SPLIT_FILE, run.path / CONFIG_FILE]
    if run.split.get("source"):
        files.append(Path(held_out_source(run.split)))
    return tuple((str(file), file_stamp(file)) for file in files)


def build_rows(run, folder: Path) -> HeldOutRows:
    lines = read_predictions(folder / EVAL_PREDICTIONS)
    data, why = input_columns(run, folder, len(lines))
    columns = text_columns(run, list(data or []))
    task = run.task.name
    if data is None:
        texts = (None for _ in lines)
    else:
        texts = zip(*(data[name] for name in columns)) if columns else (() for _ in lines)
    rows = []
    for line, values in zip(lines, texts):
        text = None if values is None else dict(zip(columns, map(_plain, values)))
        row = {"id": line.get("id"), "reference": line.get("reference"), "prediction": line.get("prediction"),
               "wrong": False, "score": None, "loss": None, "length": _length(text), "text": text}
        if text is None:
            row["text_missing"] = why
        rows.append(row)
    shape = TASK_SHAPES.get(task, _generic)
    wrong_means = shape(run, lines, rows, data)
    for row in rows:
        if row["length"] is None:
            row["length"] = len(_plain_text(row.get("source") or row.get("context") or row.get("tokens") or ""))
    return HeldOutRows(task=task, wrong_means=wrong_means, columns=columns, rows=rows, text_missing=why)


def read_predictions(path: Path) -> list[dict[str, Any]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BoardError(404, f"{path} cannot be read ({exc.strerror}); the run has no held-out predictions to show",
                         "no_predictions") from None
    with handle:
        text = handle.read()
    try:  # one JSON array of the lines: one parse instead of one per line (100k held-out rows)
        lines = json.loads("[" + ",".join(line for line in text.splitlines() if line.strip()) + "]")
        if all(isinstance(line, dict) for line in lines):
            return lines
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), 1):   # name the line that is not an object of JSON
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        break
    raise BoardError(409, f"{path} line {number} is not a JSON object; ftune does not write such a file: "
                     "evaluate the run again (ftune eval RUN)", "bad_predictions")


def text_columns(run, present: list[str]) -> list[str]:
    """The input fields of a held-out row (`present`: the data's columns): what `ftune serve` says the run takes,
    else (ner's words, lm, dpo) every column the run reads."""
    from ftune.serve.predict import input_fields

    found = [name for name in input_fields(run.task, run.config, run.state) if name in present]
    return found or [c for c in dict.fromkeys(run.state.columns.values()) if c and (c in present or not present)]


def input_columns(run, folder: Path, count: int) -> tuple[Optional[dict[str, list]], Optional[str]]:
    """The held-out input rows, column by column in the order of eval_predictions.jsonl, or (None, why not)."""
    if folder.resolve() != run.path.resolve():
        return None, ("an evaluation on other data records no split.json, so its input rows are not known here; the "
                      "lines show the ids, references and predictions")
    if not run.split:
        return None, f"the run has no {SPLIT_FILE}, so its held-out rows cannot be found"
    from ftune.data import column_list, reload_held_out_split
    from ftune.errors import UsageError

    def load(source: str, source_config: Optional[str]):
        return run.task.load_source(run.config, source, source_config)

    try:
        rows, _ = reload_held_out_split(run.split, load)
    except UsageError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 — the data cannot be read: the lines are still worth showing
        return None, f"the run's data cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
    if len(rows) != count:
        return None, (f"{SPLIT_FILE} holds {len(rows)} rows but {EVAL_PREDICTIONS} {count} lines; evaluate the run "
                      "again (ftune eval RUN)")
    return {name: column_list(rows, name) for name in rows.column_names}, None   # column-wise: fast on 100k rows


# ---- per task -------------------------------------------------------------------------------------


def _classify(run, lines, rows, data) -> str:
    first = next((line.get("prediction") for line in lines), None)
    if isinstance(first, list):
        for row in rows:
            row["wrong"] = set(row["prediction"] or []) != set(row["reference"] or [])
        _recorded(lines, rows, "score", "loss")
        return "the predicted label set differs from the reference set"
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        for row in rows:
            prediction, reference = row["prediction"], row["reference"]
            if isinstance(prediction, (int, float)) and isinstance(reference, (int, float)):
                row["loss"] = (prediction - reference) ** 2
        return "regression rows are never wrong: sort by loss (the squared error) for the worst"
    for row in rows:
        row["wrong"] = row["prediction"] != row["reference"]
    _recorded(lines, rows, "score", "loss")
    return "the predicted label is not the reference label"


def _recorded(lines, rows, *fields: str) -> None:
    """Copy the per-row figures a task's lines record (`score`, `loss`) onto the rows."""
    for line, row in zip(lines, rows):
        for name in fields:
            value = line.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = float(value)


def _ner(run, lines, rows, data) -> str:
    for line, row in zip(lines, rows):
        predicted, gold = list(line.get("prediction") or []), list(line.get("reference") or [])
        row["wrong"] = predicted != gold
        row["tokens"] = line.get("tokens")
        row["gold_entities"] = word_entities(gold)
        row["predicted_entities"] = word_entities(predicted)
        scores = [s for s in line.get("scores") or [] if isinstance(s, (int, float))]
        row["score"] = min(scores) if scores else None
    _recorded(lines, rows, "loss")
    return "a sentence with any word's tag wrong (score: the least confident word's probability)"


def word_entities(tags: list[str]) -> list[dict[str, Any]]:
    """Entities of a tag sequence as word offsets {type, start, end} (end exclusive), grouped as ftune predict
    groups them (ftune.tasks.ner.entities)."""
    from ftune.tasks.ner.entities import group_entities

    # Each word as one character of a text of its own: the entities' character offsets are then word offsets.
    spans = [(i, i + 1) for i in range(len(tags))]
    entities = group_entities("x" * len(tags), list(tags), [0.0] * len(tags), spans)
    return [{"type": e["type"], "start": e["start"], "end": e["end"]} for e in entities]


def _qa(run, lines, rows, data) -> str:
    from ftune.metrics.squad import squad_scores
    from ftune.tasks.qa.data import row_answers

    version_2 = bool(getattr(run.state, "version_2", False))
    columns = run.state.columns
    _recorded(lines, rows, "score", "loss")
    for position, (line, row) in enumerate(zip(lines, rows)):
        golds = line.get("reference") or []
        golds = [golds] if isinstance(golds, str) else list(golds)
        prediction = line.get("prediction") or ""
        row["wrong"] = squad_scores([prediction], [golds], version_2=version_2)["exact_match"] < 100
        source = {name: values[position] for name, values in data.items()} if data is not None else None
        context = str(source.get(columns.get("context"), "")) if source is not None else None
        row["context"] = context
        row["question"] = source.get(columns.get("question")) if source is not None else None
        start, end = line.get("start"), line.get("end")
        row["predicted_span"] = ({"start": start, "end": end, "text": prediction}
                                 if isinstance(start, int) and isinstance(end, int) else None)
        row["gold_spans"] = []
        if source is not None and columns.get("answers"):
            try:
                answers, starts = row_answers(source.get(columns["answers"]), source.get(columns.get("answer_start")),
                                              context)
            except ValueError:
                answers, starts = [], []
            row["gold_spans"] = [{"start": s, "end": s + len(a), "text": a} for a, s in zip(answers, starts)]
        if context is not None:
            row["length"] = len(context)
    return "no exact match with any gold answer (SQuAD answer normalisation; \"\" is no answer)"


def _seq2seq(name: str, score: Callable[[list[str], list[str]], list[float]]):
    def shape(run, lines, rows, data) -> str:
        outputs = [_plain_text(line.get("prediction")) for line in lines]
        references = [_plain_text(line.get("reference")) for line in lines]
        values = score(outputs, references) if lines else []
        median = statistics.median(values) if values else 0.0
        for row, output, value in zip(rows, outputs, values):
            row["output"] = output
            row["source"] = _plain_text(next(iter(row["text"].values()), "")) if row["text"] else None
            row["row_score"] = {"name": name, "value": value}
            row["wrong"] = value < median
        _recorded(lines, rows, "loss")
        return f"the row's {name} (0-100, computed from its line) is below the median row's ({median:.2f})"

    return shape


def rouge_l(outputs: list[str], references: list[str]) -> list[float]:
    """Each row's ROUGE-L F-measure x 100, as the summarize metric scores a row (ftune/metrics/rouge.py)."""
    from ftune.metrics.rouge import rouge_scores

    return rouge_scores(outputs, references, per_example=True)["per_example"]["rougeL"]


def chrf(outputs: list[str], references: list[str]) -> list[float]:
    """Each row's chrF (sacreBLEU's defaults, as the translate metric), 0-100."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return [float(metric.sentence_score(output, [reference]).score) for output, reference in zip(outputs, references)]


def _lm(run, lines, rows, data) -> str:
    losses = [row["prediction"] for row in rows if isinstance(row["prediction"], (int, float))]
    median = statistics.median(losses) if losses else 0.0
    for line, row in zip(lines, rows):
        loss = row["prediction"]
        row["loss"] = float(loss) if isinstance(loss, (int, float)) else None
        row["tokens"] = line.get("tokens")
        row["wrong"] = row["loss"] is not None and row["loss"] > median
    return f"the row's mean token loss is above the median row's ({median:.4f})"


def _dpo(run, lines, rows, data) -> str:
    for line, row in zip(lines, rows):
        row["wrong"] = row["prediction"] != row["reference"]
        margin = line.get("margin")
        row["margin"] = float(margin) if isinstance(margin, (int, float)) else None
        row["score"] = abs(row["margin"]) if row["margin"] is not None else None
    _recorded(lines, rows, "loss")
    return "the policy prefers the rejected answer (score: the size of the reward margin)"


def _generic(run, lines, rows, data) -> str:
    for row in rows:
        row["wrong"] = row["prediction"] != row["reference"]
    _recorded(lines, rows, "score", "loss")
    return "the prediction differs from the reference"


TASK_SHAPES = {"classify": _classify, "ner": _ner, "qa": _qa, "summarize": _seq2seq("ROUGE-L", rouge_l),
               "translate": _seq2seq("chrF", chrf), "lm": _lm, "dpo": _dpo}


# ---- querying -------------------------------------------------------------------------------------


@dataclass
class RowQuery:
    """The rows endpoint's parameters, checked."""

    wrong: Optional[bool] = None
    reference: Optional[str] = None
    prediction: Optional[str] = None
    q: Optional[str] = None
    min_length: Optional[int] = None
    max_length: Optional[int] = None
    sort: str = "id"
    order: str = "asc"
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: dict[str, str]) -> "RowQuery":
        """From query parameters; BoardError 400 naming every bad one at once."""
        problems = []
        query = cls()
        known = {"wrong", "reference", "prediction", "q", "min_length", "max_length", "sort", "order", "offset",
                 "limit", "eval", "key"}
        for name in params:
            if name not in known:
                problems.append(f"unknown parameter {name!r} (known: {', '.join(sorted(known - {'key'}))})")
        if "wrong" in params:
            value = params["wrong"].lower()
            if value not in ("true", "false", "1", "0"):
                problems.append(f"wrong={params['wrong']}: use true or false")
            query.wrong = value in ("true", "1")
        for name in ("reference", "prediction", "q"):
            if params.get(name):
                setattr(query, name, params[name])
        for name, low, high in (("min_length", 0, None), ("max_length", 0, None), ("offset", 0, None),
                                ("limit", 1, MAX_LIMIT)):
            if name in params:
                try:
                    value = int(params[name])
                except ValueError:
                    problems.append(f"{name}={params[name]}: give a whole number")
                    continue
                if value < low or (high is not None and value > high):
                    problems.append(f"{name}={value}: must be {low} to {high}" if high else
                                    f"{name}={value}: must be {low} or more")
                    continue
                setattr(query, name, value)
        if params.get("sort", "id") not in SORTS:
            problems.append(f"sort={params['sort']}: use one of {', '.join(SORTS)}")
        else:
            query.sort = params.get("sort", "id")
        if params.get("order", "asc") not in ("asc", "desc"):
            problems.append(f"order={params['order']}: use asc or desc")
        else:
            query.order = params.get("order", "asc")
        if problems:
            raise BoardError(400, "; ".join(problems), "bad_parameter")
        return query


def query_rows(held: HeldOutRows, query: RowQuery) -> dict[str, Any]:
    """One page of the rows that match `query`, sorted: the rows endpoint's answer."""
    if query.sort not in held.sortable:
        raise BoardError(400, f"sort={query.sort}: this {held.task} run's rows sort by {', '.join(held.sortable)}",
                         "bad_parameter")
    needle = query.q.lower() if query.q else None
    chosen = []
    for index, row in enumerate(held.rows):
        if query.wrong is not None and row["wrong"] != query.wrong:
            continue
        if query.reference is not None and not _labelled(row, "reference", query.reference):
            continue
        if query.prediction is not None and not _labelled(row, "prediction", query.prediction):
            continue
        if query.min_length is not None and row["length"] < query.min_length:
            continue
        if query.max_length is not None and row["length"] > query.max_length:
            continue
        if needle is not None and needle not in held.search_text(index):
            continue
        chosen.append(index)
    chosen = sort_indices(held.rows, chosen, query.sort, descending=query.order == "desc")
    page = [held.rows[i] for i in chosen[query.offset:query.offset + query.limit]]
    return {"task": held.task, "total": len(chosen), "offset": query.offset, "limit": query.limit,
            "wrong_means": held.wrong_means, "sortable": held.sortable, "columns": held.columns,
            "text_missing": held.text_missing, "rows": page}


def sort_indices(rows: list[dict], indices: list[int], sort: str, *, descending: bool) -> list[int]:
    """`indices` ordered by the rows' `sort` value; rows without one come last either way; ties keep the held-out
    order, which is also what `id` sorts by (the order of eval_predictions.jsonl: the data's order)."""
    if sort == "id":
        return indices[::-1] if descending else indices
    present = [i for i in indices if sort_value(rows[i], sort) is not None]
    absent = [i for i in indices if sort_value(rows[i], sort) is None]
    present.sort(key=lambda i: sort_value(rows[i], sort), reverse=descending)
    return present + absent


def sort_value(row: dict[str, Any], sort: str):
    if sort == "confidence":
        return row.get("score")
    if sort == "score":
        found = row.get("row_score")
        return found["value"] if found else row.get("score")
    return row.get(sort)


def _labelled(row: dict[str, Any], side: str, label: str) -> bool:
    """Whether the row's reference or prediction is `label`: the label itself, one of a multi-label set, or for ner
    a sentence holding an entity of that type."""
    entities = row.get("gold_entities" if side == "reference" else "predicted_entities")
    if entities is not None:
        return any(e["type"] == label for e in entities)
    value = row[side]
    if isinstance(value, list):
        return label in map(str, value)
    return _label_text(value) == label


def _label_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _haystack(row: dict[str, Any]) -> str:
    parts = [row.get("text"), row.get("reference"), row.get("prediction"), row.get("tokens")]
    return " ".join(_plain_text(p) for p in parts if p is not None).lower()


def _plain(value: Any) -> Any:
    """A data value as JSON can hold it (datasets gives plain Python values; a date or bytes becomes text)."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)


def _plain_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_plain_text(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_plain_text(v) for v in value.values())
    return "" if value is None else str(value)


def _length(text: Optional[dict[str, Any]]) -> Optional[int]:
    """Characters of the row's main text, its first input field (a list of words counted joined by spaces); qa rows
    count their context."""
    if not text:
        return None
    return len(_plain_text(next(iter(text.values()))))
