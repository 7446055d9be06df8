"""The README of an ONNX export: what the folder holds and a plain onnxruntime example for its task, which needs
onnxruntime, tokenizers and numpy only (no ftune, no PyTorch, no transformers)."""

from __future__ import annotations

SETUP = '''{json}import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = "."  # this export folder
session = ort.InferenceSession(f"{{folder}}/model.onnx", providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(f"{{folder}}/tokenizer.json")
tokenizer.enable_truncation(max_length={max_length}{strategy})
tokenizer.enable_padding(pad_id={pad_id}, pad_token={pad_token!r}){labels}


def feed(encodings):
    """The graph's inputs ({inputs}) for a batch of encodings."""
    columns = {{"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
               "token_type_ids": [e.type_ids for e in encodings]}}
    return {{item.name: np.array(columns[item.name], dtype=np.int64) for item in session.get_inputs()}}
'''

LABELS = '\nid2label = json.load(open(f"{folder}/config.json"))["id2label"]'

EXAMPLES = {
    "single-label": '''

texts = ["{text}"]
logits = session.run(None, feed(tokenizer.encode_batch(texts)))[0]
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
for text, row in zip(texts, probs):
    print(text, "->", id2label[str(row.argmax())], round(float(row.max()), 4))
''',
    "multi-label": '''

texts = ["{text}"]
logits = session.run(None, feed(tokenizer.encode_batch(texts)))[0]
probs = 1 / (1 + np.exp(-logits))
for text, row in zip(texts, probs):
    print(text, "->", [id2label[str(i)] for i, p in enumerate(row) if p >= {threshold}])
''',
    "regression": '''

texts = ["{text}"]
values = session.run(None, feed(tokenizer.encode_batch(texts)))[0][:, 0]
for text, value in zip(texts, values):
    print(text, "->", float(value))
''',
    "ner": '''

words = {words!r}
encoding = tokenizer.encode(words, is_pretokenized=True)
logits = session.run(None, feed([encoding]))[0][0]
tags, seen = [], set()
for position, word in enumerate(encoding.word_ids):  # each word's tag is that of its first piece
    if word is not None and word not in seen:
        seen.add(word)
        tags.append(id2label[str(logits[position].argmax())])
print(list(zip(words, tags)))
''',
    "qa": '''

question, context = "{question}", "{context}"
encoding = tokenizer.encode(question, context)  # a longer context is cut here; ftune predict reads it in windows
start, end = (output[0] for output in session.run(None, feed([encoding])))
in_context = [i for i, sequence in enumerate(encoding.sequence_ids) if sequence == 1]
first, last = max(((s, e) for s in in_context for e in in_context if s <= e < s + {max_answer_length}),
                  key=lambda span: start[span[0]] + end[span[1]])
print(context[encoding.offsets[first][0]:encoding.offsets[last][1]])
''',
}


def example_kind(task: str, run) -> str:
    if task != "classify":
        return task
    return run.config.task_options.problem_type if run is not None else "single-label"


def readme(task: str, run, tokenizer, inputs: list[str], quantize: str) -> str:
    """README.md of the export folder."""
    kind = example_kind(task, run)
    options = run.config.task_options if run is not None else None
    max_length = run.config.max_length if run is not None else 512
    setup = SETUP.format(max_length=max_length, strategy=', strategy="only_second"' if task == "qa" else "",
                         pad_id=tokenizer.pad_token_id or 0, pad_token=tokenizer.pad_token,
                         inputs=", ".join(inputs), json="" if task == "qa" else "import json\n\n",
                         labels="" if task == "qa" else LABELS)
    example = EXAMPLES[kind].format(text="the film was a great story", threshold=getattr(options, "threshold", 0.5),
                                    words=["paris", "is", "the", "capital", "of", "france"],
                                    question="what is the capital of france?",
                                    context="paris is the capital of france.",
                                    max_answer_length=getattr(options, "max_answer_length", 30))
    source = f"run `{run.path.name}` ({task}, {run.config.model}, {'LoRA merged' if run.is_lora else 'full'})" \
        if run is not None else f"a {task} model"
    ftune_part = (f"\n## With ftune\n\n```bash\nftune eval EXPORT_DIR       # re-scores the run's held-out split in "
                  f"onnxruntime\nftune predict EXPORT_DIR {_predict_flags(task)}\n```\n\nBoth run the graph in "
                  "onnxruntime (no PyTorch); `ftune eval` reports the run's metrics except `eval_loss` (the graph "
                  "returns logits only).\n") if run is not None else ""
    quantized = (" Its weights are int8 (onnxruntime dynamic quantisation): `export.json` records how the held-out "
                 "metric moved.") if quantize != "fp32" else ""
    return (f"# ONNX export of {source}\n\n"
            f"`model.onnx` is one graph with dynamic batch and sequence axes: inputs {', '.join(inputs)} (int64, "
            f"batch x sequence), outputs {_outputs(task)}.{quantized} `export.json` says how it was made and how "
            "it was verified in onnxruntime against PyTorch. The tokenizer files and `config.json`"
            f"{'' if task == 'qa' else ' (with `id2label`)'} are beside it.\n\n"
            "## Run it with onnxruntime\n\n"
            "```bash\npip install onnxruntime tokenizers numpy\n```\n\n"
            f"```python\n{setup}{example}```\n{ftune_part}")


def _outputs(task: str) -> str:
    return {"classify": "logits (batch x labels)", "ner": "logits (batch x sequence x labels)",
            "qa": "start_logits and end_logits (batch x sequence)"}[task]


def _predict_flags(task: str) -> str:
    return {"classify": '--text "the film was a great story"', "ner": '--text "paris is the capital of france"',
            "qa": '--question "what is the capital of france?" --context "paris is the capital of france."'}[task]
