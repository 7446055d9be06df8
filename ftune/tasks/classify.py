"""`ftune classify`: sequence classification of single texts or text pairs (e.g. sentiment, NLI).

Labels may be strings or numbers (or a datasets ClassLabel); their names go into the model config's
id2label/label2id (ftune.tasks.labels), so the saved model and the `text-classification` pipeline speak them.
Each held-out row's prediction is the class with the highest softmax probability, with that probability as
its score; accuracy and macro precision/recall/F1 come from ftune's `classification` metric module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ftune.config import TaskOptions, option
from ftune.data import check_no_missing, pick_column, tokenize_rows
from ftune.errors import UsageError
from ftune.tasks.base import PredictInput, Scores, Task, first_array, softmax
from ftune.tasks.labels import (check_known, class_names, distinct_values, feature_names, label_config, label_name,
                                row_labels)

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question1", "review", "content", "document")
PAIR_OF = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2", "question": "sentence"}
LABEL_COLUMNS = ("label", "labels", "class", "category", "sentiment", "rating", "target")


@dataclass
class ClassifyOptions(TaskOptions):
    text_column: Optional[str] = option(None, "Column with the text (detected: text, sentence, sentence1, "
                                              "premise, question1, review, content).", panel="Data")
    text_pair_column: Optional[str] = option(None, "Column with the second text of a pair (detected: "
                                                   "sentence2, hypothesis, question2).", panel="Data")
    label_column: Optional[str] = option(None, "Column with the label, strings or numbers (detected: label, "
                                               "labels, class, category, sentiment, rating).", panel="Data")


class ClassifyTask(Task):
    name = "classify"
    summary = "Fine-tune sequence classification (single texts or text pairs)."
    options_class = ClassifyOptions
    model_class = "AutoModelForSequenceClassification"
    peft_model_class = "AutoPeftModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    main_metric = "f1"
    reported_metrics = ("accuracy", "f1", "precision", "recall")
    predict_inputs = (PredictInput("texts", "--text", "Input text (repeatable)."),
                      PredictInput("text_pairs", "--text-pair", "Second text of a pair, one per --text."))

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        opts = config.task_options
        text = pick_column(columns, opts.text_column, TEXT_COLUMNS, what="text", option="--text-column")
        pair_candidates = [PAIR_OF[text.lower()]] if text.lower() in PAIR_OF and not opts.text_column else []
        pair = pick_column(columns, opts.text_pair_column, pair_candidates, what="second text",
                           option="--text-pair-column", required=False)
        label = pick_column([c for c in columns if c not in (text, pair)] if not opts.label_column else columns,
                            opts.label_column, LABEL_COLUMNS, what="label", option="--label-column")
        if label in (text, pair):
            raise UsageError(f"column '{label}' cannot be both the label and a text column")
        return {"text": text, "text_pair": pair, "label": label}

    def stratify_by(self, config, columns):
        return lambda ds: row_labels(ds, columns["label"])

    def prepare_state(self, config, split, columns):
        used = [c for c in columns.values() if c]
        check_no_missing(split.train, used, "the training split", ids=split.train_names)
        check_no_missing(split.eval, used, "the held-out split", ids=split.eval_names)
        label = columns["label"]
        labels = class_names(distinct_values(split.train, label), split.train.features[label], column=label)
        if len(labels) < 2:
            raise UsageError(f"the training rows have one class only ({labels[0]!r} in column '{label}'); "
                             "classification needs at least two")
        unseen = sorted(set(row_labels(split.eval, label)) - set(labels))
        if unseen:
            raise UsageError(f"held-out labels never seen in training: {', '.join(unseen[:10])}; add training rows "
                             f"for them or drop those rows (training labels: {', '.join(labels[:20])})")
        return {"columns": columns, "labels": labels}

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        check_no_missing(rows, [c for c in state["columns"].values() if c], where)
        check_known(row_labels(rows, state["columns"]["label"]), state["labels"], where)

    # ---- model ------------------------------------------------------------------------------------
    def base_model_kwargs(self, state):
        # ignore_mismatched_sizes: a checkpoint already tuned on other labels gets a new head.
        return {**label_config(state["labels"]), "ignore_mismatched_sizes": True}

    # ---- features ---------------------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        columns, max_length = state["columns"], config.max_length
        label_ids = {name: i for i, name in enumerate(state["labels"])}
        labelled = purpose != "predict" and columns["label"] in rows.column_names
        class_label = feature_names(rows.features[columns["label"]]) if labelled else None

        def encode(batch):
            pair = batch[columns["text_pair"]] if columns["text_pair"] else None
            features = tokenizer(batch[columns["text"]], pair, truncation=True, max_length=max_length)
            if labelled:
                values = batch[columns["label"]]
                names = [class_label[v] for v in values] if class_label else [label_name(v) for v in values]
                features["labels"] = [label_ids[name] for name in names]
            return features

        return tokenize_rows(rows, encode, config, desc="tokenizing")

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        labels = state["labels"]
        probs = softmax(first_array(predictions))
        best = probs.argmax(-1)
        return [{"prediction": labels[k], "score": float(probs[i, k])} for i, k in enumerate(best.tolist())]

    def references(self, config, state, rows):
        return row_labels(rows, state["columns"]["label"])

    def metrics(self, config, state, outputs, references, features):
        from ftune.metrics import load_metric

        labels = state["labels"]
        index = {name: i for i, name in enumerate(labels)}
        scores = load_metric("classification").compute(
            predictions=[index[o["prediction"]] for o in outputs], references=[index[r] for r in references],
            num_labels=len(labels))
        per_class = {labels[i]: figures for i, figures in scores["per_class"].items()}
        details = {"per_class": per_class, "confusion_matrix": {"labels": labels,
                                                                "matrix": scores["confusion_matrix"]}}
        return Scores(metrics={k: v for k, v in scores.items() if isinstance(v, float)}, details=details,
                      table=_per_class_table(per_class, labels, scores["confusion_matrix"]))

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, config, state, options):
        texts, pairs = options.get("texts") or [], options.get("text_pairs") or []
        columns = state["columns"]
        if not texts:
            raise UsageError("nothing to predict: pass --text (repeatable) or --input FILE")
        if pairs and len(pairs) != len(texts):
            raise UsageError(f"{len(texts)} --text but {len(pairs)} --text-pair; give one --text-pair per --text")
        if columns["text_pair"] and not pairs:
            raise UsageError(f"this run classifies text pairs ('{columns['text']}', '{columns['text_pair']}'); "
                             "pass --text-pair for each --text")
        rows = [{columns["text"]: t} for t in texts]
        for row, pair in zip(rows, pairs):
            row[columns["text_pair"] or "text_pair"] = pair
        return rows

    def check_inputs(self, config, state, inputs, names):
        columns = state["columns"]
        needed = [c for c in (columns["text"], columns["text_pair"]) if c]
        missing = [c for c in needed if c not in inputs[0]]
        if missing:
            raise UsageError(f"the input has no column {', '.join(repr(c) for c in missing)}; this run reads "
                             f"{', '.join(needed)} (the input has: {', '.join(inputs[0])})")
        for row, name in zip(inputs, names):
            for column in needed:
                if not isinstance(row.get(column), str) or not row[column].strip():
                    raise UsageError(f"{name} has no text in column '{column}'; give every row a text to classify")

    def prediction_fields(self, output):
        return {"label": output["prediction"], "score": output["score"]}

    def model_card_usage(self, config, state, run_path):
        if not config.lora:
            return (f"from transformers import pipeline\n\nclassifier = pipeline(\"text-classification\", "
                    f"model=\"{run_path}\")\nclassifier(\"some text\")")
        labels = state["labels"]
        return (f"from peft import AutoPeftModelForSequenceClassification\nfrom transformers import AutoTokenizer\n\n"
                f"labels = {labels!r}\n"
                f"model = AutoPeftModelForSequenceClassification.from_pretrained(\n    \"{run_path}\", "
                f"num_labels={len(labels)}, id2label=dict(enumerate(labels)),\n"
                f"    label2id={{name: i for i, name in enumerate(labels)}})\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")")


def _per_class_table(per_class: dict[str, dict], labels: list[str], matrix: list[list[int]]) -> str:
    from ftune.console import table

    rows = [(name, f"{f['precision']:.4f}", f"{f['recall']:.4f}", f"{f['f1']:.4f}", f["support"])
            for name, f in per_class.items()]
    out = [table(["class", "precision", "recall", "f1", "support"], rows, title="per class")]
    short = [str(n)[:12] for n in labels]
    out.append(table(["reference \\ predicted", *short], [[short[i], *row] for i, row in enumerate(matrix)],
                     title="confusion matrix"))
    return "\n\n".join(out)


TASK = ClassifyTask()
