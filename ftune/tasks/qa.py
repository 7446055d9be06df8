"""`ftune qa`: extractive question answering — find the answer span in a context (SQuAD v1.1 and v2.0 style).

Data comes in three layouts: the Hub SQuAD layout (id, question, context, answers{text[], answer_start[]}),
the original nested SQuAD JSON files (data -> paragraphs -> qas, flattened here into the Hub layout), and
flat csv/jsonl rows with an answer text and an optional start (found in the context when missing). Data
with any unanswerable question (no answer, or is_impossible) is SQuAD v2: the model may answer "".

Contexts longer than --max-length are cut into windows overlapping by --doc-stride tokens (ftune.qa_windows);
the best span over all windows of an example is its answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ftune.data import SPLIT_ALIASES, check_no_missing, pick_column
from ftune.errors import UsageError
from ftune.tasks.base import Evaluation, Task

QUESTION_COLUMNS = ("question", "questions", "query")
CONTEXT_COLUMNS = ("context", "paragraph", "passage")
ANSWER_COLUMNS = ("answers", "answer", "answer_text", "answer_texts")
ANSWER_START_COLUMNS = ("answer_start", "answer_starts", "start")


class QATask(Task):
    name = "qa"
    model_class = "AutoModelForQuestionAnswering"
    peft_model_class = "AutoPeftModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"  # peft then also trains and saves the qa_outputs head
    main_metric = "f1"

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config):
        nested = load_nested_squad(config.data)
        return nested if nested is not None else super().load_source(config)

    def resolve_columns(self, config, columns):
        question = pick_column(columns, config.question_column, QUESTION_COLUMNS, what="question",
                               option="--question-column")
        context = pick_column(columns, config.context_column, CONTEXT_COLUMNS, what="context",
                              option="--context-column")
        answers = pick_column(columns, config.answers_column, ANSWER_COLUMNS, what="answers",
                              option="--answers-column")
        if len({question, context, answers}) < 3:
            raise UsageError(f"the question, context and answers columns must differ (got '{question}', "
                             f"'{context}', '{answers}'); pass --question-column, --context-column, --answers-column")
        rest = [c for c in columns if c not in (question, context, answers)]
        start = pick_column(rest, None, ANSWER_START_COLUMNS, what="answer start", option="", required=False)
        return {"question": question, "context": context, "answers": answers, "answer_start": start}

    def prepare_state(self, config, split, columns):
        version_2 = False
        for where, ds in (("the training split", split.train), ("the held-out split", split.eval)):
            version_2 |= any(not texts for texts, _ in check_rows(ds, columns, where))
        return {"columns": columns, "version_2": version_2}

    def check_eval_rows(self, config, state, rows, where):
        super().check_eval_rows(config, state, rows, where)
        check_rows(rows, state["columns"], where)

    # ---- model ------------------------------------------------------------------------------------
    def load_model(self, config, tokenizer, state):
        from ftune.qa_windows import require_fast_tokenizer

        require_fast_tokenizer(tokenizer, config.model)  # before any weights are loaded
        return super().load_model(config, tokenizer, state)

    # ---- features and training --------------------------------------------------------------------
    def preprocess(self, config, tokenizer, ds, state, *, training):
        """Windows of (question, context); training windows carry answer positions only, eval windows also
        what post-processing needs (ftune.qa_windows.WINDOW_INFO_COLUMNS) and positions for the eval loss."""
        from ftune.qa_windows import encode_windows

        columns = state["columns"]

        def encode(batch, indices):
            contexts = batch[columns["context"]]
            answers = [row_answers(*values) for values in zip(_column(batch, columns["answers"]),
                                                              _column(batch, columns["answer_start"]),
                                                              contexts)]
            # Training targets the first gold answer; none (SQuAD v2) points at CLS.
            spans = [(a[1][0], a[1][0] + len(a[0][0])) if a[0] else None for a in answers]
            windows = encode_windows(tokenizer, batch[columns["question"]], contexts, max_length=config.max_length,
                                     doc_stride=config.doc_stride, answer_spans=spans)
            if training:
                for key in ("example_index", "cls_index", "offset_mapping"):
                    windows.pop(key)
                return windows
            windows["context"] = [contexts[i] for i in windows["example_index"]]
            windows["gold"] = [answers[i][0] for i in windows["example_index"]]
            windows["example_index"] = [indices[i] for i in windows["example_index"]]
            return windows

        return ds.map(encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                      desc="cutting contexts into windows")

    def compute_metrics(self, state):
        from ftune.qa_windows import WindowScorer

        return WindowScorer(version_2=state["version_2"])

    def trainer_class(self):
        from ftune.qa_trainer import QATrainer

        return QATrainer

    def arguments_class(self):
        from ftune.qa_trainer import QATrainingArguments

        return QATrainingArguments

    def training_arguments(self, config):
        return {"qa_n_best": config.n_best, "qa_max_answer_length": config.max_answer_length,
                "qa_null_threshold": config.null_threshold}

    # ---- scoring ----------------------------------------------------------------------------------
    def evaluate(self, trainer, tokenizer, config, rows, state) -> Evaluation:
        from ftune.metrics import load_metric
        from ftune.qa_trainer import model_inputs
        from ftune.qa_windows import answers_for_windows

        windows = self.preprocess(config, tokenizer, rows, state, training=False)
        output = trainer.predict(model_inputs(windows), metric_key_prefix="eval")
        start_logits, end_logits = output.predictions[0], output.predictions[1]
        answers, golds = answers_for_windows(windows, start_logits, end_logits, _settings(config, state))
        predicted = [a["text"] for a in answers]
        scores = load_metric("squad").compute(predictions=predicted, references=golds, version_2=state["version_2"])
        metrics = {f"eval_{k}": v for k, v in scores.items()}
        metrics["eval_loss"] = float(output.metrics["eval_loss"])
        metrics["eval_samples"] = len(rows)
        metrics["eval_windows"] = len(windows)
        ids = [str(i) for i in rows["id"]] if "id" in rows.column_names else [str(i) for i in range(len(rows))]
        predictions = [{"id": i, "prediction": a["text"], "reference": gold, "score": a["score"]}
                       for i, a, gold in zip(ids, answers, golds)]
        return Evaluation(metrics=metrics, predictions=predictions)

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, state, options):
        questions, contexts = options.get("questions") or [], options.get("contexts") or []
        columns = state["columns"]
        if not questions:
            raise UsageError("nothing to predict: pass --question with --context, or --input FILE")
        if not contexts:
            raise UsageError("no context: pass --context (one for all questions, or one per --question)")
        if len(contexts) == 1:
            contexts = contexts * len(questions)
        if len(contexts) != len(questions):
            raise UsageError(f"{len(questions)} --question but {len(contexts)} --context; give one context for "
                             "all questions or one per question")
        return [{columns["question"]: q, columns["context"]: c} for q, c in zip(questions, contexts)]

    def predict(self, model, tokenizer, config, state, inputs, batch_size):
        import torch

        from ftune.qa_windows import best_answers, encode_windows

        settings = _settings(config, state)
        question_key, context_key = _input_keys(state["columns"], inputs)
        for i, row in enumerate(inputs):
            if not isinstance(row.get(context_key), str) or not row[context_key].strip():
                raise UsageError(f"input row {i} has an empty context; give each question a context to answer from")
        device = next(model.parameters()).device
        results = []
        for first in range(0, len(inputs), batch_size):
            batch = inputs[first:first + batch_size]
            contexts = [row[context_key] for row in batch]
            windows = encode_windows(tokenizer, [str(row[question_key]) for row in batch], contexts,
                                     max_length=config["max_length"], doc_stride=config["doc_stride"])
            model_keys = [k for k in windows if k not in ("example_index", "cls_index", "offset_mapping")]
            start_logits, end_logits = [], []
            for w in range(0, len(windows["input_ids"]), batch_size):
                chunk = tokenizer.pad({k: windows[k][w:w + batch_size] for k in model_keys}, return_tensors="pt")
                with torch.no_grad():
                    out = model(**chunk.to(device))
                start_logits += list(out.start_logits.float().cpu().numpy())
                end_logits += list(out.end_logits.float().cpu().numpy())
            answers = best_answers(contexts, windows["example_index"], windows["offset_mapping"],
                                   windows["cls_index"], start_logits, end_logits, settings)
            results += [{**row, "answer": a["text"], "score": a["score"], "start": a["start"], "end": a["end"]}
                        for row, a in zip(batch, answers)]
        return results


# --------------------------------------------------------------------------------------------------
# Answers and the three data layouts


def row_answers(value: Any, start: Any, context: str) -> tuple[list[str], list[int]]:
    """Gold answer texts and character starts of one row, from any layout; raise ValueError when an answer
    is not where its start says or (no start given) not in the context at all."""
    if isinstance(value, dict):  # Hub layout: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text"), value.get("answer_start")
    else:
        texts, starts = value, start
    texts = [texts] if isinstance(texts, str) or texts is None else list(texts)
    texts = [t for t in texts if t is not None and str(t) != ""]
    starts = list(starts) if isinstance(starts, (list, tuple)) else [starts] * len(texts)
    if len(starts) != len(texts):
        raise ValueError(f"{len(texts)} answer texts but {len(starts)} answer starts")
    resolved = []
    for text, at in zip(texts, starts):
        text = str(text)
        if at is None or (isinstance(at, float) and math.isnan(at)):
            found = context.find(text)
            if found < 0:
                raise ValueError(f"answer {_short(text)} is not in its context")
            resolved.append(found)
            continue
        at = int(at)
        if context[at:at + len(text)] != text:
            raise ValueError(f"answer_start {at} points at {_short(context[at:at + len(text)])}, not at the answer "
                             f"{_short(text)}")
        resolved.append(at)
    return texts, resolved


def check_rows(ds, columns: dict[str, Optional[str]], where: str) -> list[tuple[list[str], list[int]]]:
    """Every row's answers; raise UsageError naming the rows with no question or context, or a misplaced answer."""
    check_no_missing(ds, [columns["question"], columns["context"]], where)
    answers, bad = [], []
    for i, values in enumerate(zip(_column(ds, columns["answers"]), _column(ds, columns["answer_start"]),
                                   ds[columns["context"]])):
        try:
            answers.append(row_answers(*values))
        except ValueError as exc:
            bad.append(f"row {i}: {exc}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UsageError(f"{len(bad)} row(s) of {where} have answers that do not match their context — "
                         f"{'; '.join(bad[:3])}{more}; fix the answer or its start, or remove those rows")
    return answers


def load_nested_squad(data: Optional[str]):
    """A DatasetDict from original SQuAD JSON files (a file, or a folder such as train-v2.0.json +
    dev-v2.0.json), flattened into the Hub layout; None when `data` is something else."""
    if not data:
        return None
    path = Path(data).expanduser()
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    if not files or not all(f.suffix.lower() == ".json" and _looks_nested(f) for f in files):
        return None
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {"text": datasets.List(datasets.Value("string")),
                    "answer_start": datasets.List(datasets.Value("int32"))}})
    splits: dict[str, list[dict]] = {}
    for file in files:
        stem = file.stem.lower().split("-")[0].split(".")[0]
        split = "train" if path.is_file() else SPLIT_ALIASES.get(stem, stem)
        splits.setdefault(split, []).extend(flatten_squad(file))
    for split, rows in splits.items():
        if not rows:
            raise UsageError(f"{data}: split '{split}' has no questions; give SQuAD files with at least one")
    return datasets.DatasetDict({s: datasets.Dataset.from_list(rows, features=features) for s, rows in splits.items()})


def _looks_nested(file: Path) -> bool:
    with file.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(65536)
    return head.lstrip().startswith("{") and '"data"' in head and '"paragraphs"' in head


def flatten_squad(file: Path) -> list[dict]:
    """One Hub-layout row per question of a SQuAD v1.1/v2.0 file; is_impossible questions get no answers."""
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        rows = []
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    rows.append({"id": str(qa["id"]), "title": article.get("title", ""),
                                 "context": paragraph["context"], "question": qa["question"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [int(a["answer_start"]) for a in answers]}})
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{file} is not a valid SQuAD JSON file ({type(exc).__name__}: {exc}); expected "
                         "data -> paragraphs -> context, qas -> id, question, answers") from None
    return rows


def _column(batch, name: Optional[str]) -> list:
    """A column's values, or Nones when the column is not used (no answer_start column)."""
    if name is None:
        size = len(batch) if hasattr(batch, "column_names") else len(next(iter(batch.values())))
        return [None] * size
    return list(batch[name])


def _input_keys(columns: dict[str, Optional[str]], inputs: list[dict]) -> tuple[str, str]:
    """The keys of the run's question and context columns in the predict inputs (or plain question/context)."""
    keys = inputs[0].keys() if inputs else []
    found = []
    for role in ("question", "context"):
        key = columns[role] if columns[role] in keys else role if role in keys else None
        if key is None:
            raise UsageError(f"the input has no column '{columns[role]}' (the {role}); it has: {', '.join(keys)}")
        found.append(key)
    return found[0], found[1]


def _settings(config, state):
    from ftune.qa_windows import SpanSettings

    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return SpanSettings(n_best=get("n_best"), max_answer_length=get("max_answer_length"),
                        null_threshold=get("null_threshold"), version_2=state["version_2"])


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


TASK = QATask()
