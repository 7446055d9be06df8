"""`ftune qa`: extractive question answering — find the answer span in a context (SQuAD v1.1 and v2.0 style).

The data layouts and their answers are in ftune.tasks.qa.data. Contexts longer than --max-length are cut into
windows overlapping by --doc-stride tokens (ftune.tasks.qa.windows); the best span over all windows of an
example is its answer, mapped back to the context's characters. Scores are SQuAD's own (ftune's `squad` metric
module): exact match and F1 on 0-100, with HasAns/NoAns breakdowns for v2 data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ftune.config import TaskOptions, option
from ftune.data import check_split_filled, check_split_text, column_list, pick_column, tokenize_rows
from ftune.errors import UsageError
from ftune.tasks.base import PredictInput, Scores, Task
from ftune.tasks.qa.data import check_rows, column_values, load_nested_squad, row_answers, text_options
from ftune.tasks.state import TaskState

QUESTION_COLUMNS = ("question", "questions", "query")
CONTEXT_COLUMNS = ("context", "paragraph", "passage")
ANSWER_COLUMNS = ("answers", "answer", "answer_text", "answer_texts")
ANSWER_START_COLUMNS = ("answer_start", "answer_starts", "start")


@dataclass
class QAOptions(TaskOptions):
    question_column: Optional[str] = option(None, "Column with the question (detected: question, query).",
                                            panel="Data")
    context_column: Optional[str] = option(None, "Column with the context (detected: context, paragraph, "
                                                 "passage).", panel="Data")
    answers_column: Optional[str] = option(None, "Column with the answers: SQuAD's {text, answer_start} or an "
                                                 "answer text, its start taken from an answer_start column or found "
                                                 "in the context (detected: answers, answer).", panel="Data")
    doc_stride: int = option(128, "Token overlap between windows of a long context.", panel="Data", min=1)
    max_answer_length: int = option(30, "Longest answer span in tokens.", panel="Data", min=1)
    n_best: int = option(20, "Start/end candidates per window in post-processing.", panel="Data", min=1)
    null_threshold: float = option(0.0, "SQuAD v2: answer only when the best span beats the no-answer score "
                                        "by this margin.", panel="Data")

    defaults = {"max_length": 384}


@dataclass(frozen=True, kw_only=True)
class QAState(TaskState):
    """What a qa run derives: its columns (question, context, answers, answer_start) and its SQuAD version."""

    version_2: bool                     # some questions have no answer (SQuAD v2): the model may answer ""


class QATask(Task):
    name = "qa"
    summary = "Fine-tune extractive question answering (SQuAD v1.1 and v2.0 style)."
    options_class = QAOptions
    state_class = QAState
    model_class = "AutoModelForQuestionAnswering"
    peft_model_class = "AutoPeftModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"  # peft then also trains and saves the qa_outputs head
    main_metric = "f1"
    metric_module = "squad"
    reported_metrics = ("exact_match", "f1")
    predict_inputs = (PredictInput("questions", "--question", "Question (repeatable, with --context)."),
                      PredictInput("contexts", "--context", "Context to answer from: one for all questions, or "
                                                            "one per --question."))

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config, data, data_config):
        nested = load_nested_squad(data)
        return nested if nested is not None else super().load_source(config, data, data_config)

    def resolve_columns(self, config, columns):
        opts = config.task_options
        question = pick_column(columns, opts.question_column, QUESTION_COLUMNS, what="question",
                               option="--question-column")
        context = pick_column(columns, opts.context_column, CONTEXT_COLUMNS, what="context",
                              option="--context-column")
        answers = pick_column(columns, opts.answers_column, ANSWER_COLUMNS, what="answers",
                              option="--answers-column")
        if len({question, context, answers}) < 3:
            raise UsageError(f"the question, context and answers columns must differ (got '{question}', "
                             f"'{context}', '{answers}'); pass --question-column, --context-column, --answers-column")
        rest = [c for c in columns if c not in (question, context, answers)]
        start = pick_column(rest, None, ANSWER_START_COLUMNS, what="answer start", option="", required=False)
        return {"question": question, "context": context, "answers": answers, "answer_start": start}

    def prepare_state(self, config, split, columns):
        check_split_text(split, text_options(columns))
        check_split_filled(split, [columns["question"], columns["context"]])
        version_2 = False
        for where, ds, ids in (("the training split", split.train, split.train_names),
                               ("the held-out split", split.eval, split.eval_names)):
            version_2 |= any(not texts for texts, _ in check_rows(ds, columns, where, ids))
        return QAState(columns=columns, version_2=version_2)

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        check_rows(rows, state.columns, where)

    # ---- model ------------------------------------------------------------------------------------
    def load_model(self, config, tokenizer, state):
        from ftune.tasks.qa.windows import require_fast_tokenizer

        require_fast_tokenizer(tokenizer, config.model)  # before any weights are loaded
        return super().load_model(config, tokenizer, state)

    # ---- features ---------------------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        """Windows of (question, context). Training windows carry answer positions only; eval windows also the
        columns `decode` reads (WINDOW_INFO_COLUMNS), with positions for the eval loss; predict windows no
        positions."""
        from ftune.tasks.qa.windows import encode_windows

        columns, max_length, doc_stride = state.columns, config.max_length, config.task_options.doc_stride
        question_key, context_key = _input_keys(columns, rows.column_names)

        def encode(batch, indices):
            contexts = batch[context_key]
            spans = None
            if purpose != "predict":
                answers = [row_answers(*values) for values in zip(column_values(batch, columns["answers"]),
                                                                  column_values(batch, columns["answer_start"]),
                                                                  contexts)]
                # The model learns the first gold answer; none (SQuAD v2) points at CLS.
                spans = [(a[1][0], a[1][0] + len(a[0][0])) if a[0] else None for a in answers]
            windows = encode_windows(tokenizer, [str(q) for q in batch[question_key]], contexts,
                                     max_length=max_length, doc_stride=doc_stride, answer_spans=spans)
            if purpose == "train":
                for key in ("example_index", "cls_index", "offset_mapping"):
                    windows.pop(key)
                return windows
            windows["example_index"] = [indices[i] for i in windows["example_index"]]
            return windows

        return tokenize_rows(rows, encode, config, desc="cutting contexts into windows", with_indices=True)

    def model_inputs(self, features):
        from ftune.tasks.qa.windows import WINDOW_INFO_COLUMNS

        return features.remove_columns([c for c in WINDOW_INFO_COLUMNS if c in features.column_names])

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        from ftune.tasks.qa.windows import SpanSettings, best_answers

        opts = config.task_options
        settings = SpanSettings(n_best=opts.n_best, max_answer_length=opts.max_answer_length,
                                null_threshold=opts.null_threshold, version_2=state.version_2)
        _, context_key = _input_keys(state.columns, rows.column_names)
        info = {c: column_list(features, c) for c in ("example_index", "offset_mapping", "cls_index")}
        answers = best_answers(column_list(rows, context_key), info["example_index"], info["offset_mapping"],
                               info["cls_index"], predictions[0], predictions[1], settings)
        return [{"prediction": a["text"], "score": a["score"], "start": a["start"], "end": a["end"]}
                for a in answers]

    def references(self, config, state, rows):
        columns = state.columns
        return [row_answers(*values)[0] for values in zip(column_values(rows, columns["answers"]),
                                                          column_values(rows, columns["answer_start"]),
                                                          column_list(rows, columns["context"]))]

    def metrics(self, config, state, outputs, references, features):
        from ftune.metrics import load_metric

        scores = load_metric(self.metric_module).compute(predictions=[o["prediction"] for o in outputs],
                                                         references=references, version_2=state.version_2)
        return Scores(metrics={**scores, "windows": len(features)})

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, config, state, options):
        questions, contexts = options.get("questions") or [], options.get("contexts") or []
        columns = state.columns
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

    def check_inputs(self, config, state, inputs, names):
        question_key, context_key = _input_keys(state.columns, list(inputs[0]))
        for row, name in zip(inputs, names):
            for key, what in ((context_key, "context to answer from"), (question_key, "question")):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise UsageError(f"{name} has no text in column '{key}'; give every row a {what}")

    def prediction_fields(self, output):
        return {"answer": output["prediction"], "score": output["score"], "start": output["start"],
                "end": output["end"]}


def _input_keys(columns: dict[str, Optional[str]], keys: list[str]) -> tuple[str, str]:
    """The run's question and context columns among `keys` (or plain question/context)."""
    found = []
    for role in ("question", "context"):
        key = columns[role] if columns[role] in keys else role if role in keys else None
        if key is None:
            raise UsageError(f"the input has no column '{columns[role]}' (the {role}); it has: {', '.join(keys)}")
        found.append(key)
    return found[0], found[1]


TASK = QATask()
