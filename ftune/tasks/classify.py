"""`ftune classify`: sequence classification of single texts or text pairs (e.g. sentiment, NLI).

Labels may be strings or ints (or a datasets ClassLabel); their names go into the model config's
id2label/label2id, so the saved model and the `text-classification` pipeline speak them.
"""

from __future__ import annotations

from typing import Any, Optional

from ftune.data import check_no_missing, pick_column
from ftune.errors import UsageError
from ftune.tasks.base import Evaluation, Task

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question1", "review", "content", "document")
PAIR_OF = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2", "question": "sentence"}
LABEL_COLUMNS = ("label", "labels", "class", "category", "sentiment", "rating", "target")


class ClassifyTask(Task):
    name = "classify"
    model_class = "AutoModelForSequenceClassification"
    peft_model_class = "AutoPeftModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    main_metric = "f1"
    pipeline_task = "text-classification"

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        text = pick_column(columns, config.text_column, TEXT_COLUMNS, what="text", option="--text-column")
        pair_candidates = [PAIR_OF[text.lower()]] if text.lower() in PAIR_OF and not config.text_column else []
        pair = pick_column(columns, config.text_pair_column, pair_candidates, what="second text",
                           option="--text-pair-column", required=False)
        label = pick_column([c for c in columns if c not in (text, pair)] if not config.label_column else columns,
                            config.label_column, LABEL_COLUMNS, what="label", option="--label-column")
        if label in (text, pair):
            raise UsageError(f"column '{label}' cannot be both the label and a text column")
        return {"text": text, "text_pair": pair, "label": label}

    def stratify_by(self, columns):
        return lambda ds: [str(v) for v in ds[columns["label"]]]

    def prepare_state(self, config, split, columns):
        used = [c for c in columns.values() if c]
        for name, ds in (("the training split", split.train), ("the held-out split", split.eval)):
            check_no_missing(ds, used, name)
        labels = label_names(split.train, columns["label"])
        if len(labels) < 2:
            raise UsageError(f"the training rows have one class only ({labels[0]!r} in column '{columns['label']}'); "
                             "classification needs at least two")
        known = set(labels)
        unseen = sorted({str(v) for v in _label_values(split.eval, columns["label"])} - known)
        if unseen:
            raise UsageError(f"held-out labels never seen in training: {', '.join(unseen[:10])}; add training rows "
                             f"for them or drop those rows (training labels: {', '.join(labels[:20])})")
        return {"columns": columns, "labels": labels}

    def check_eval_rows(self, config, state, rows, where):
        super().check_eval_rows(config, state, rows, where)
        check_no_missing(rows, [c for c in state["columns"].values() if c], where)
        unseen = sorted({str(v) for v in _label_values(rows, state["columns"]["label"])} - set(state["labels"]))
        if unseen:
            raise UsageError(f"{where} has labels this run never learned: {', '.join(unseen[:10])} (it knows "
                             f"{', '.join(state['labels'][:20])})")

    # ---- model ------------------------------------------------------------------------------------
    def base_model_kwargs(self, state):
        labels = state["labels"]
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)},
                "ignore_mismatched_sizes": True}  # a checkpoint already tuned on other labels gets a new head

    # ---- features ---------------------------------------------------------------------------------
    def preprocess(self, config, tokenizer, ds, state, *, training):
        columns = state["columns"]
        label_ids = {name: i for i, name in enumerate(state["labels"])}
        class_names = getattr(ds.features.get(columns["label"]), "names", None)
        to_name = (lambda v: class_names[v]) if class_names else str

        def encode(batch):
            pair = batch[columns["text_pair"]] if columns["text_pair"] else None
            features = tokenizer(batch[columns["text"]], pair, truncation=True, max_length=config.max_length)
            if columns["label"] in batch:
                features["labels"] = [label_ids[to_name(v)] for v in batch[columns["label"]]]
            return features

        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def compute_metrics(self, state):
        num_labels = len(state["labels"])
        metric = _metric()

        def compute(eval_pred):
            logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            scores = metric.compute(predictions=logits.argmax(-1), references=eval_pred.label_ids,
                                    num_labels=num_labels)
            return {k: v for k, v in scores.items() if isinstance(v, float)}

        return compute

    # ---- scoring ----------------------------------------------------------------------------------
    def evaluate(self, trainer, tokenizer, config, rows, state) -> Evaluation:
        import numpy as np

        labels = state["labels"]
        features = self.preprocess(config, tokenizer, rows, state, training=False)
        output = trainer.predict(features, metric_key_prefix="eval")
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        probs = _softmax(np.asarray(logits, dtype=np.float64))
        pred_ids = probs.argmax(-1)
        scores = _metric().compute(predictions=pred_ids, references=output.label_ids, num_labels=len(labels))
        metrics = {f"eval_{k}": v for k, v in scores.items() if isinstance(v, float)}
        metrics["eval_loss"] = float(output.metrics["eval_loss"])
        metrics["eval_samples"] = len(rows)
        ids = _row_ids(rows)
        predictions = [{"id": ids[i], "prediction": labels[p], "reference": labels[r], "score": float(probs[i, p])}
                       for i, (p, r) in enumerate(zip(pred_ids.tolist(), output.label_ids.tolist()))]
        per_class = {labels[i]: figures for i, figures in scores["per_class"].items()}
        details = {"per_class": per_class, "confusion_matrix": {"labels": labels,
                                                                "matrix": scores["confusion_matrix"]}}
        return Evaluation(metrics=metrics, predictions=predictions, details=details,
                          table=_per_class_table(per_class, labels, scores["confusion_matrix"]))

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, state, options):
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

    def predict(self, model, tokenizer, config, state, inputs, batch_size):
        import numpy as np
        import torch

        columns, labels = state["columns"], state["labels"]
        needed = [c for c in (columns["text"], columns["text_pair"]) if c]
        missing = [c for c in needed if c not in inputs[0]]
        if missing:
            raise UsageError(f"the input has no column {', '.join(repr(c) for c in missing)}; this run reads "
                             f"{', '.join(needed)} (the input has: {', '.join(inputs[0])})")
        results = []
        device = next(model.parameters()).device
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            texts = [str(r[columns["text"]]) for r in batch]
            pairs = [str(r[columns["text_pair"]]) for r in batch] if columns["text_pair"] else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=config["max_length"], padding=True,
                                return_tensors="pt").to(device)
            with torch.no_grad():
                logits = model(**encoded).logits.float().cpu().numpy()
            probs = _softmax(logits.astype(np.float64))
            for row, p in zip(batch, probs):
                best = int(p.argmax())
                results.append({**row, "label": labels[best], "score": float(p[best])})
        return results

    def model_card_usage(self, run_path, lora, state):
        if not lora:
            return (f"from transformers import pipeline\n\nclassifier = pipeline(\"text-classification\", "
                    f"model=\"{run_path}\")\nclassifier(\"some text\")")
        labels = state["labels"]
        return (f"from peft import AutoPeftModelForSequenceClassification\nfrom transformers import AutoTokenizer\n\n"
                f"labels = {labels!r}\n"
                f"model = AutoPeftModelForSequenceClassification.from_pretrained(\n    \"{run_path}\", "
                f"num_labels={len(labels)}, id2label=dict(enumerate(labels)),\n"
                f"    label2id={{name: i for i, name in enumerate(labels)}})\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")")


def label_names(ds, column: str) -> list[str]:
    """Class names in id order: a ClassLabel's names, else the sorted distinct values (numbers numerically)."""
    feature = ds.features[column]
    if hasattr(feature, "names"):
        return list(feature.names)
    values = set(_label_values(ds, column))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _label_values(ds, column: str) -> list[Any]:
    feature = ds.features[column]
    values = ds[column]
    if hasattr(feature, "names"):
        return [feature.names[v] for v in values]
    return values


def _metric():
    from ftune.metrics import load_metric

    return load_metric("classification")


def _softmax(logits):
    import numpy as np

    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def _row_ids(rows) -> list[Any]:
    for name in ("id", "idx", "guid"):
        if name in rows.column_names:
            return list(rows[name])
    return list(range(len(rows)))


def _per_class_table(per_class: dict[str, dict], labels: list[str], matrix: list[list[int]]) -> str:
    from ftune.report import table

    rows = [(name, f"{f['precision']:.4f}", f"{f['recall']:.4f}", f"{f['f1']:.4f}", f["support"])
            for name, f in per_class.items()]
    out = [table(["class", "precision", "recall", "f1", "support"], rows, title="per class")]
    short = [str(n)[:12] for n in labels]
    out.append(table(["reference \\ predicted", *short], [[short[i], *row] for i, row in enumerate(matrix)],
                     title="confusion matrix"))
    return "\n\n".join(out)


TASK = ClassifyTask()
