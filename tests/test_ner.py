"""`ftune ner`: data layouts, sub-word alignment, windows over long sentences, entity grouping, the seqeval metric,
and train -> eval -> predict -> merge (full and LoRA) through the real CLI on the tiny BERT."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import read_json, read_jsonl, task_recipes, train_run

CITIES = ["paris", "london", "berlin", "france", "germany", "england"]
ADJECTIVES = ["big", "small", "red", "happy"]
ANIMALS = ["cat", "dog", "bird", "fish"]
FILLER = "the a runs jumps sleeps eats quickly slowly house tree river".split()
# Few steps, short inputs: each run trains in seconds on 2 CPU cores (the task is learnable in ~40 steps); in fp32
# on every CPU (auto trains in bf16 on CPUs with AMX), since the tests assert what training learned.
FAST = ["--max-steps", "40", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--logging-steps", "10",
        "--precision", "fp32"]


def tagged_sentence(rng: random.Random, parts: int) -> tuple[list[str], list[str]]:
    """Places are B-LOC; an adjective + animal is B-ANI I-ANI; the rest is O."""
    tokens, tags = [], []
    for _ in range(parts):
        r = rng.random()
        if r < 0.25:
            tokens.append(rng.choice(CITIES))
            tags.append("B-LOC")
        elif r < 0.4:
            tokens += [rng.choice(ADJECTIVES), rng.choice(ANIMALS)]
            tags += ["B-ANI", "I-ANI"]
        else:
            tokens.append(rng.choice(FILLER))
            tags.append("O")
    return tokens, tags


def sentences(n: int, seed: int = 0, parts=(3, 9)) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    return [tagged_sentence(rng, rng.randint(*parts)) for _ in range(n)]


def write_conll(path: Path, rows) -> Path:
    lines = ["-DOCSTART- -X- O O", ""]
    for tokens, tags in rows:
        lines += [f"{token} NN B-NP {tag}" for token, tag in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def conll_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conll")
    write_conll(folder / "train.txt", sentences(120, seed=0))
    write_conll(folder / "dev.txt", sentences(30, seed=1))
    return folder


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_bert, conll_folder):
    return train_run(tmp_path_factory, "ner", "full", "--model", tiny_bert, "--data", conll_folder, *FAST)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, conll_folder):
    return train_run(tmp_path_factory, "ner", "lora", "--model", tiny_bert, "--data", conll_folder, "--lora",
                     "--lora-targets", "query,key,value,dense", *FAST, "--lr", "1e-2")


def conll_rows(path: Path) -> list[tuple[list[str], list[str]]]:
    from ftune.tasks.ner.data import read_conll

    return [(r["tokens"], r["tags"]) for r in read_conll(path)]


# ---- a full run -----------------------------------------------------------------------------------


@pytest.mark.numerics
def test_full_run_writes_the_run_directory(full_run):
    names = {p.name for p in full_run.path.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "ftune.yaml", "split.json",
                "train_results.json", "trainer_state.json", "eval_results.json", "eval_predictions.jsonl",
                "eval_details.json", "README.md"}
    assert expected <= names
    assert not [n for n in names if n.startswith("checkpoint-") or n == ".ftune.lock"]
    metrics = read_json(full_run.path / "eval_results.json")
    for key in ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["eval_f1"] >= 0.8, metrics  # the task is learnable: the tiny model must learn it
    split = read_json(full_run.path / "split.json")
    assert split["method"] == "split" and split["eval_split"] == "validation" and split["rows"] == 30
    config = read_json(full_run.path / "config.json")
    assert config["id2label"] == {"0": "B-ANI", "1": "B-LOC", "2": "I-ANI", "3": "O"}  # sorted distinct tags
    assert "eval_f1" in (full_run.path / "README.md").read_text()
    assert "per entity type" in full_run.stdout and "LOC" in full_run.stdout
    state = read_json(full_run.path / "trainer_state.json")
    assert state["best_metric"] is not None and any("eval_f1" in e for e in state["log_history"])


def test_one_tag_per_word_and_metrics_recomputed_with_seqeval(full_run, conll_folder):
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    predictions = read_jsonl(full_run.path / "eval_predictions.jsonl")
    source = conll_rows(conll_folder / "dev.txt")
    assert [p["id"] for p in predictions] == list(range(30))
    for p in predictions:
        tokens, tags = source[p["id"]]
        assert p["tokens"] == tokens and p["reference"] == tags
        assert len(p["prediction"]) == len(tokens) == len(p["scores"])  # exactly one tag per word
    predicted, reference = [p["prediction"] for p in predictions], [p["reference"] for p in predictions]
    metrics = read_json(full_run.path / "eval_results.json")
    assert metrics["eval_precision"] == pytest.approx(precision_score(reference, predicted))
    assert metrics["eval_recall"] == pytest.approx(recall_score(reference, predicted))
    assert metrics["eval_f1"] == pytest.approx(f1_score(reference, predicted))
    assert metrics["eval_accuracy"] == pytest.approx(accuracy_score(reference, predicted))
    words = sum(len(r) for r in reference)
    assert metrics["eval_accuracy"] == pytest.approx(
        sum(a == b for p, r in zip(predicted, reference) for a, b in zip(p, r)) / words)
    report = classification_report(reference, predicted, output_dict=True, zero_division=0)
    details = read_json(full_run.path / "eval_details.json")["per_type"]
    assert set(details) == {"ANI", "LOC"}
    for kind, figures in details.items():
        assert figures["precision"] == pytest.approx(report[kind]["precision"])
        assert figures["recall"] == pytest.approx(report[kind]["recall"])
        assert figures["f1"] == pytest.approx(report[kind]["f1-score"])
        assert figures["support"] == report[kind]["support"]


def test_eval_reproduces_training_metrics(full_run, ftune, tmp_path, conll_folder):
    result = ftune("eval", full_run.path, "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    trained, again = read_json(full_run.path / "eval_results.json"), read_json(tmp_path / "eval_results.json")
    for key in ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy"):
        assert again[key] == trained[key], key
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-5)
    assert [p["prediction"] for p in read_jsonl(tmp_path / "eval_predictions.jsonl")] == \
        [p["prediction"] for p in read_jsonl(full_run.path / "eval_predictions.jsonl")]
    assert "per entity type" in result.stdout

    # The same sentences given as a CoNLL file to --data: the same tags, ids the file's sentence numbers.
    result = ftune("eval", full_run.path, "--data", conll_folder / "dev.txt", "--output-dir", tmp_path / "file")
    assert result.exit_code == 0, result
    assert read_jsonl(tmp_path / "file" / "eval_predictions.jsonl") == read_jsonl(tmp_path / "eval_predictions.jsonl")


@pytest.mark.numerics
def test_predict_prints_entities_with_character_offsets(full_run, ftune, tmp_path):
    text = "The happy cat sleeps, Paris and the big dog"
    result = ftune("predict", full_run.path, "--text", text, "--text", "london")
    assert result.exit_code == 0, result
    first, second = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert first["text"] == text
    assert first["tokens"] == ["The", "happy", "cat", "sleeps", ",", "Paris", "and", "the", "big", "dog"]
    assert len(first["tags"]) == len(first["tokens"])
    for entity in first["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
    assert {(e["type"], e["text"]) for e in first["entities"]} >= {("ANI", "happy cat"), ("LOC", "Paris"),
                                                                    ("ANI", "big dog")}
    assert second["entities"][0]["type"] == "LOC" and second["entities"][0]["text"] == "london"

    inputs = write_jsonl(tmp_path / "in.jsonl", [{"tokens": ["red", "bird", "in", "berlin"]}, {"text": "paris"}])
    result = ftune("predict", full_run.path, "--input", inputs, "--output", tmp_path / "out.jsonl")
    # Mixed rows: the first row decides the input column (tokens), which the second row lacks.
    assert result.exit_code == 2 and "in.jsonl line 2 has no words in column 'tokens'" in result.stderr, result
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"tokens": ["red", "bird", "in", "berlin"]}])
    result = ftune("predict", full_run.path, "--input", inputs, "--output", tmp_path / "out.jsonl")
    assert result.exit_code == 0, result
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["tags"][:2] == ["B-ANI", "I-ANI"] and row["tags"][3] == "B-LOC"
    # Entities of given words count characters in the words joined by spaces.
    assert [(e["text"], e["start"], e["end"]) for e in row["entities"]][:1] == [("red bird", 0, 8)]


@pytest.mark.numerics
def test_full_run_serves_the_token_classification_pipeline(full_run, ftune):
    """Words the tiny tokenizer keeps whole: the pipeline's sub-tokens are ftune's words, so the two agree."""
    from transformers import AutoTokenizer, pipeline

    from ftune.tasks.ner.data import split_words

    text = "The happy cat sleeps. Paris, London, the big dog."
    assert len(AutoTokenizer.from_pretrained(full_run.path).tokenize(text)) == len(split_words(text)[0])
    tagger = pipeline("token-classification", model=str(full_run.path), aggregation_strategy="simple")
    expected = tagger(text)
    result = ftune("predict", full_run.path, "--text", text)
    assert result.exit_code == 0, result
    entities = json.loads(result.stdout.strip().splitlines()[-1])["entities"]
    assert len(entities) == len(expected) >= 2
    for ours, theirs in zip(entities, expected):
        assert ours["type"] == theirs["entity_group"]
        assert (ours["start"], ours["end"]) == (theirs["start"], theirs["end"])
        assert ours["text"].lower() == theirs["word"]
        assert ours["score"] == pytest.approx(float(theirs["score"]), abs=1e-5)


# ---- LoRA -----------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_lora_train_eval_merge_give_equal_logits(lora_run, ftune, tmp_path):
    import torch
    from peft import AutoPeftModelForTokenClassification
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run = lora_run.path
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()
    assert read_json(run / "adapter_config.json")["task_type"] == "TOKEN_CLS"
    metrics = read_json(run / "eval_results.json")
    assert metrics["eval_f1"] > 0.3, metrics  # the head trained and was saved (a fresh head scores ~0)

    result = ftune("eval", run, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result
    assert read_json(tmp_path / "eval" / "eval_results.json")["eval_f1"] == metrics["eval_f1"]

    labels = ["B-ANI", "B-LOC", "I-ANI", "O"]
    adapter = AutoPeftModelForTokenClassification.from_pretrained(
        run, num_labels=4, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    batch = tokenizer([["big", "dog", "in", "paris"], ["the", "river"]], is_split_into_words=True, padding=True,
                      return_tensors="pt")
    result = ftune("merge", run, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 0, result
    merged = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapter(**batch).logits, atol=1e-5, rtol=1e-4)
    assert merged.config.id2label[1] == "B-LOC"


# ---- windows over long sentences ------------------------------------------------------------------


def test_window_plan_covers_every_word_once():
    from ftune.tasks.ner.windows import owners, plan_windows

    rng = random.Random(3)
    for _ in range(200):
        lengths = [rng.randint(1, 5) for _ in range(rng.randint(1, 80))]
        budget = rng.randint(5, 30)
        windows = plan_windows(lengths, budget, budget // 4)
        assert windows[0][0] == 0 and windows[-1][1] == len(lengths)
        for (a, b), (c, _) in zip(windows, windows[1:]):
            assert a < c <= b  # overlapping or touching, always moving on
        for a, b in windows:
            assert b - a == 1 or sum(lengths[a:b]) <= budget
        owner = owners(windows, len(lengths))
        assert all(windows[w][0] <= i < windows[w][1] for i, w in enumerate(owner))


@pytest.mark.numerics
def test_a_sentence_many_times_longer_than_max_length_gets_a_tag_for_every_word(tiny_bert, ftune, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    from ftune.config import resolve_config
    from ftune.tasks.ner import TASK

    rng = random.Random(5)
    rows = [{"id": f"s{i}", "tokens": t, "tags": g} for i, (t, g) in enumerate(sentences(40, seed=4))]
    long_tokens, long_tags = tagged_sentence(rng, 70)  # ~80 words: more than five windows of 16 tokens
    long_tokens[10] = "riverhouse"                          # a word of several sub-tokens inside a window
    rows.append({"id": "long", "tokens": long_tokens, "tags": long_tags})
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows[:30])
    write_jsonl(data / "validation.jsonl", rows[30:])
    run = tmp_path / "run"
    result = ftune("ner", "--model", tiny_bert, "--data", data, "--output-dir", run, "--max-steps", "30",
                   "--batch-size", "8", "--lr", "3e-3", "--max-length", "16", "--precision", "fp32")
    assert result.exit_code == 0, result
    predictions = {p["id"]: p for p in read_jsonl(run / "eval_predictions.jsonl")}
    held = predictions["long"]
    assert held["tokens"] == long_tokens and len(held["prediction"]) == len(long_tokens) == len(held["reference"])
    assert sum(a == b for a, b in zip(held["prediction"], long_tags)) / len(long_tags) > 0.6

    # The windows: several per long sentence, none longer than --max-length, each word predicted in one.
    tokenizer = AutoTokenizer.from_pretrained(run)
    config = resolve_config(TASK.options_class, layers=[("test", {"data": "x", "max_length": 16})])
    state = TASK.state_class(columns={"tokens": "tokens", "tags": "tags"}, labels=["B-ANI", "B-LOC", "I-ANI", "O"])
    features = TASK.features(config, tokenizer, datasets.Dataset.from_list([rows[-1]]), state, purpose="eval")
    assert len(features) > 5 and all(len(ids) <= 16 for ids in features["input_ids"])
    predicted_words = sorted(w for positions in features["word_index"] for w in positions if w >= 0)
    assert predicted_words == list(range(len(long_tokens)))
    labelled = sum(label != -100 for labels in features["labels"] for label in labels)
    assert labelled == len(long_tokens)  # each word trained once, at its first sub-token

    # Scored alone, the long sentence keeps its tags.
    one = write_jsonl(tmp_path / "one.jsonl", [rows[-1]])
    result = ftune("eval", run, "--data", one, "--output-dir", tmp_path / "alone")
    assert result.exit_code == 0, result
    (alone,) = read_jsonl(tmp_path / "alone" / "eval_predictions.jsonl")
    assert alone["prediction"] == held["prediction"]
    assert alone["scores"] == pytest.approx(held["scores"], abs=1e-5)


def test_subword_alignment_and_label_all_tokens(tiny_bert):
    from transformers import AutoTokenizer

    from ftune.tasks.ner.windows import encode_sentences

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    words = ["riverhouse", "cat", "   "]  # a word of several sub-tokens, a whole word, a word of no token at all
    assert len(tokenizer(["riverhouse"], is_split_into_words=True, add_special_tokens=False)["input_ids"]) > 1
    labels = {"B-X": 0, "I-X": 1, "O": 2}
    tags = [[labels["B-X"], labels["O"], labels["O"]]]
    first = encode_sentences(tokenizer, [words], max_length=32, tag_ids=tags)
    every = encode_sentences(tokenizer, [words], max_length=32, tag_ids=tags, continuation={0: 1},
                             label_all_tokens=True)
    n_pieces = len(tokenizer(["riverhouse"], is_split_into_words=True, add_special_tokens=False)["input_ids"])
    assert first["labels"][0] == [-100, 0] + [-100] * (n_pieces - 1) + [2, 2, -100]
    assert every["labels"][0] == [-100, 0] + [1] * (n_pieces - 1) + [2, 2, -100]
    assert first["word_index"][0] == [-1, 0] + [-1] * (n_pieces - 1) + [1, 2, -1]
    # The blank word stands in as the unknown token, so it too has a first sub-token.
    assert tokenizer.convert_ids_to_tokens(first["input_ids"][0])[-2] == tokenizer.unk_token


# ---- entities -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)]),
    (["I-PER", "I-PER", "I-LOC", "O", "I-LOC"], [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 4, 4)]),  # IO / IOB1
    (["S-PER", "B-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "I-LOC"],
     [("PER", 0, 0), ("PER", 1, 2), ("PER", 3, 3), ("LOC", 4, 6), ("LOC", 7, 7)]),  # BIOES
    (["PER", "PER", "O", "LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),  # bare tags are continuations
])
def test_entity_grouping(tags, expected):
    from ftune.tasks.ner.data import joined_spans
    from ftune.tasks.ner.entities import group_entities

    words = [f"w{i}" for i in range(len(tags))]
    scores = [0.5 + 0.05 * i for i in range(len(tags))]
    text = " ".join(words)
    entities = group_entities(text, tags, scores, joined_spans(words))
    assert [(e["type"], words.index(e["text"].split()[0]), words.index(e["text"].split()[-1]))
            for e in entities] == expected
    for entity, (_, first, last) in zip(entities, expected):
        assert entity["score"] == pytest.approx(sum(scores[first:last + 1]) / (last - first + 1))


def test_metric_reads_every_scheme():
    from ftune.metrics import load_metric

    metric = load_metric("seqeval_ner")
    tags = ["S-PER", "O", "B-LOC", "E-LOC"]
    bioes = metric.compute(predictions=[tags], references=[tags])
    assert bioes["f1"] == 1.0 and set(bioes["per_type"]) == {"PER", "LOC"}
    bare = metric.compute(predictions=[["PER", "PER", "O", "LOC"]], references=[["PER", "O", "O", "LOC"]])
    assert set(bare["per_type"]) == {"PER", "LOC"}  # not "ER"/"OC": bare tags are read as I- tags
    assert bare["precision"] == 0.5 and bare["recall"] == 0.5 and bare["accuracy"] == 0.75
    none = metric.compute(predictions=[["O", "O"]], references=[["O", "O"]])
    assert none["f1"] == 0.0 and none["accuracy"] == 1.0 and none["per_type"] == {}


# ---- data layouts ---------------------------------------------------------------------------------


def _layout(data: str, **options):
    from types import SimpleNamespace as Split

    from ftune.config import resolve_config
    from ftune.tasks.ner import TASK

    config = resolve_config(TASK.options_class, layers=[("test", {"data": data, **options})])
    source = TASK.load_source(config, data, None)
    train = source["train"]
    columns = TASK.resolve_columns(config, train.column_names)
    state = TASK.prepare_state(config, Split(train=train, eval=train, train_names=None, eval_names=None), columns)
    return source, columns, state


def test_hub_layout_with_class_label_ids(tmp_path, tiny_bert, ftune):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features({"id": datasets.Value("string"),
                                  "tokens": datasets.List(datasets.Value("string")),
                                  "pos_tags": datasets.List(datasets.Value("int32")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=names))})
    index = {n: i for i, n in enumerate(names)}
    rows = [{"id": str(i), "tokens": t, "pos_tags": [0] * len(t),
             "ner_tags": [index[g.replace("ANI", "PER")] for g in tags]} for i, (t, tags) in enumerate(sentences(40))]
    folder = tmp_path / "hub"
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:30], features=features),
                         validation=datasets.Dataset.from_list(rows[30:], features=features)).save_to_disk(folder)
    _, columns, state = _layout(str(folder))
    assert columns == {"tokens": "tokens", "tags": "ner_tags"}
    assert state.labels == names  # the ClassLabel's names, in id order (I-LOC is never used, still kept)
    run = tmp_path / "run"
    result = ftune("ner", "--model", tiny_bert, "--data", folder, "--output-dir", run, "--max-steps", "2",
                   "--batch-size", "8")
    assert result.exit_code == 0, result
    assert read_json(run / "config.json")["label2id"] == index
    first = read_jsonl(run / "eval_predictions.jsonl")[0]
    assert first["id"] == "30" and first["reference"] == [names[i] for i in rows[30]["ner_tags"]]


def test_jsonl_csv_and_tsv_layouts(tmp_path):
    rows = sentences(6, seed=9)
    jsonl = write_jsonl(tmp_path / "rows.jsonl", [{"words": t, "labels": g} for t, g in rows])
    source, columns, state = _layout(str(jsonl))
    assert columns == {"tokens": "words", "tags": "labels"}
    assert state.labels == sorted({x for _, g in rows for x in g})

    import csv

    with (tmp_path / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tokens", "tags"])
        writer.writerow([json.dumps(rows[0][0]), " ".join(rows[0][1])])  # a JSON list, or words and spaces
        for tokens, tags in rows[1:]:
            writer.writerow([json.dumps(tokens), json.dumps(tags)])
    _, columns, state = _layout(str(tmp_path / "rows.csv"))
    assert columns == {"tokens": "tokens", "tags": "tags"}

    # A .tsv is CoNLL for ner (tab-separated columns, the tag last), as is a .conll file.
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("\n\n".join("\n".join(f"{a}\t{b}" for a, b in zip(t, g)) for t, g in rows) + "\n")
    source, _, _ = _layout(str(tsv))
    assert [(r["tokens"], r["tags"]) for r in source["train"]] == rows
    source, _, _ = _layout(str(write_conll(tmp_path / "rows.conll", rows)))
    assert len(source["train"]) == 6


def test_ner_recipes_resolve():
    found = task_recipes("ner")
    assert {"ner-bert-base", "ner-bert-base-lora"} <= set(found)
    assert found["ner-bert-base-lora"][0]["lora"] is True


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no-tag", "lengths", "missing-column", "unseen-tag", "one-tag"])
def test_bad_input_is_one_line_with_exit_code_2(case, ftune, tmp_path, tiny_bert):
    args = []
    if case == "no-tag":
        data = tmp_path / "train.conll"
        data.write_text("the O\ncat O\n\nparis B-LOC\nlondon\n")
        expected = "line 5 ('london') has no tag"
    elif case == "lengths":
        rows = [{"tokens": t, "tags": g} for t, g in sentences(10)]
        rows[4]["tags"] = rows[4]["tags"][:-1]
        data = write_jsonl(tmp_path / "rows.jsonl", rows)
        expected = f"rows.jsonl line 5 of the training split has {len(rows[4]['tokens'])} tokens but"
        args = ["--val-fraction", "0.1", "--seed", "1"]
    elif case == "missing-column":
        data = write_jsonl(tmp_path / "rows.jsonl", [{"tokens": t, "tags": g} for t, g in sentences(10)])
        args = ["--tags-column", "ner"]
        expected = "no column 'ner' for tags (--tags-column); the columns are: tokens, tags"
    elif case == "unseen-tag":
        data = tmp_path / "splits"
        data.mkdir()
        write_conll(data / "train.conll", [(["paris", "the"], ["B-LOC", "O"])] * 4)
        write_conll(data / "test.conll", [(["bob"], ["B-PER"])])
        expected = "held-out tags never seen in training: B-PER"
    else:
        data = write_conll(tmp_path / "o.conll", [(["the", "cat"], ["O", "O"])] * 10)
        expected = "one tag only ('O'"
    result = ftune("ner", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run", "--max-steps", "1",
                   *args)
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_predict_input_without_words_is_one_line(full_run, ftune, tmp_path):
    empty = ftune("predict", full_run.path, "--text", " ")
    assert empty.exit_code == 2 and "input 1 has no words" in empty.stderr
    other = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "paris"}])
    result = ftune("predict", full_run.path, "--input", other)
    assert result.exit_code == 2 and "no column 'tokens'" in result.stderr and "sentence" in result.stderr
    foreign = ftune("predict", full_run.path, "--text", "paris", "--text-pair", "x")
    assert foreign.exit_code == 2 and "--text-pair does not apply to ner runs" in foreign.stderr


# ---- rows keep their predictions ------------------------------------------------------------------


def test_rows_keep_their_predictions(tiny_bert, ftune, tmp_path):
    """Rows of very different lengths: scored with the split == scored alone == `ftune predict`."""
    from tests.test_row_order import varied_lengths

    rng = random.Random(6)
    rows = []
    for i, n in enumerate(varied_lengths(40)):
        tokens, tags = tagged_sentence(rng, max(1, n // 2))
        rows.append({"id": f"n{i}", "tokens": tokens, "tags": tags})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "run"
    result = ftune("ner", "--model", tiny_bert, "--data", data, "--output-dir", run, "--val-fraction", "0.5",
                   "--max-steps", "6", "--batch-size", "4", "--lr", "3e-3", "--max-length", "48")
    assert result.exit_code == 0, result
    by_id = {r["id"]: r for r in rows}
    held = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == by_id[p["id"]]["tags"] and p["tokens"] == by_id[p["id"]]["tokens"] for p in held)
    ordered = sorted(held, key=lambda p: len(p["tokens"]))
    for picked in (ordered[0], ordered[-1]):
        one = write_jsonl(tmp_path / f"{picked['id']}.jsonl", [by_id[picked["id"]]])
        result = ftune("eval", run, "--data", one, "--output-dir", tmp_path / f"{picked['id']}-eval")
        assert result.exit_code == 0, result
        (alone,) = read_jsonl(tmp_path / f"{picked['id']}-eval" / "eval_predictions.jsonl")
        assert alone["id"] == picked["id"] and alone["prediction"] == picked["prediction"]
        assert alone["scores"] == pytest.approx(picked["scores"], abs=1e-5)
    # The whole held-out file through `ftune predict`, in another batch size: the same tags, row for row.
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": p["id"], "tokens": by_id[p["id"]]["tokens"]} for p in held])
    result = ftune("predict", run, "--input", inputs, "--output", tmp_path / "out.jsonl", "--batch-size", "3")
    assert result.exit_code == 0, result
    predicted = read_jsonl(tmp_path / "out.jsonl")
    assert [p["id"] for p in predicted] == [h["id"] for h in held]
    assert [p["tags"] for p in predicted] == [h["prediction"] for h in held]
    for p, h in zip(predicted, held):
        scores = [e["score"] for e in p["entities"]]
        assert all(0 < s <= 1 for s in scores)
        assert len(p["tags"]) == len(h["scores"])
