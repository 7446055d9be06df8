"""Bad input gets one `error:` line on stderr, exit code 2, no traceback — and loses nothing.

Each case runs the real CLI and asserts: exit code 2, exactly one line on stderr (it starts with `error:`,
contains the expected words), no traceback anywhere, and every file under the test's folder and the shared runs'
folders byte-identical before and after (data, user folders, finished runs, merge outputs).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import invoke
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_qa import qa_rows

STEPS = ["--max-steps", "2", "--batch-size", "8", "--max-length", "32"]


def assert_usage_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree_digest(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert):
    """Finished runs the cases use (and must leave exactly as they are)."""
    base = tmp_path_factory.mktemp("runs")
    data = write_jsonl(base / "data.jsonl", sentiment_rows(40))
    for name, extra in (("full", []), ("lora", ["--lora"])):
        result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", base / name, *STEPS, *extra)
        assert result.exit_code == 0, result
    assert invoke("merge", base / "lora", "--output-dir", base / "merged").exit_code == 0
    return base


@dataclass
class Ctx:
    tmp: Path
    runs: Path
    bert: Path
    gpt2: Path
    data: Path

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def rows(self, name: str, rows: list[dict]) -> Path:
        return write_jsonl(self.tmp / name, rows)

    def classify(self, *args, data=None, out="run") -> list:
        return ["classify", "--model", self.bert, "--data", data or self.data, "--output-dir", self.tmp / out,
                *STEPS, *args]

    def copy_run(self, name: str) -> Path:
        target = self.tmp / f"copy-{name}"
        shutil.copytree(self.runs / name, target)
        return target


def _interrupted(c: Ctx) -> Path:
    """A copy of a run that looks interrupted (its last file never written)."""
    run = c.copy_run("full")
    (run / "train_results.json").unlink()
    return run


def _folder_with(c: Ctx, name: str, files: dict[str, str]) -> Path:
    folder = c.tmp / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


CASES: dict[str, Callable[[Ctx], tuple[list, tuple[str, ...]]]] = {
    # ---- options ------------------------------------------------------------------------------------
    "lr-nan": lambda c: (c.classify("--lr", "nan"), ("--lr", "finite")),
    "epochs-nan": lambda c: (c.classify("--epochs", "nan"), ("--epochs", "finite")),
    "lr-inf": lambda c: (c.classify("--lr", "inf"), ("--lr",)),
    "batch-size-zero": lambda c: (c.classify("--batch-size", "0"), ("--batch-size",)),
    "unknown-flag": lambda c: (c.classify("--lrr", "3"), ("no such option: --lrr", "ftune classify --help")),
    "bad-type": lambda c: (c.classify("--epochs", "many"), ("--epochs", "valid number")),
    "missing-value": lambda c: (c.classify("--lr"), ("--lr",)),
    "val-fraction-range": lambda c: (c.classify("--val-fraction", "1.5"), ("--val-fraction",)),
    "precision-choice": lambda c: (c.classify("--precision", "fp8"), ("--precision", "fp8")),
    "set-unknown-key": lambda c: (c.classify("--set", "lora_rank=4"), ("lora_rank", "lora_r")),
    "set-malformed": lambda c: (c.classify("--set", "lr"), ("key=value",)),
    "config-missing": lambda c: (c.classify("--config", c.tmp / "nope.yaml"), ("does not exist",)),
    "config-bad-yaml": lambda c: (c.classify("--config", c.file("bad.yaml", "a: [1,\n")), ("not valid YAML",)),
    "config-not-mapping": lambda c: (c.classify("--config", c.file("list.yaml", "- a\n- b\n")), ("mapping",)),
    "config-unknown-key": lambda c: (c.classify("--config", c.file("k.yaml", "learning_rate: 0.1\n")),
                                     ("unknown key 'learning_rate'",)),
    "lora-targets-unknown": lambda c: (c.classify("--lora", "--lora-targets", "nope"), ("nope", "not found")),
    "qlora-without-lora": lambda c: (c.classify("--load-in-4bit"), ("add --lora",)),
    "accelerate-config-unknown": lambda c: (c.classify("--accelerate-config", "nope"), ("shipped: ddp",)),
    "no-data": lambda c: (["classify", "--model", c.bert, "--output-dir", c.tmp / "run"], ("--data",)),
    "task-unknown": lambda c: (["tag", "--data", c.data], ("no such command",)),
    # ---- data ---------------------------------------------------------------------------------------
    "data-missing": lambda c: (c.classify(data=c.tmp / "nope.csv"), ("does not exist", "nope.csv")),
    "data-empty-jsonl": lambda c: (c.classify(data=c.file("empty.jsonl", "")), ("no rows",)),
    "data-header-only-csv": lambda c: (c.classify(data=c.file("h.csv", "text,label\n")), ("no rows",)),
    "data-malformed-jsonl": lambda c: (c.classify(data=c.file("m.jsonl", '{"text": "a", "label": 1}\n{oops\n')),
                                       ("line 2 is not valid JSON",)),
    "data-not-utf8": lambda c: (c.classify(data=c.file("l.csv", b"text,label\n\xe9t\xe9 bon,1\nok,0\n")),
                                ("not UTF-8", "line 2", "iconv")),
    "column-unknown": lambda c: (c.classify("--label-column", "sentiment"), ("'sentiment'", "id, text, label")),
    "columns-undetectable": lambda c: (c.classify(data=c.rows("odd.jsonl", [{"body": "x", "y": i % 2}
                                                                             for i in range(20)])),
                                       ("--text-column", "body, y")),
    "one-class": lambda c: (c.classify(data=c.rows("one.jsonl", [{"text": f"a {i}", "label": "pos"}
                                                                 for i in range(20)])), ("one class only",)),
    "held-out-label-unseen": lambda c: (c.classify(data=_splits(c)), ("never seen in training", "neutral")),
    "empty-cells-named-by-line": lambda c: (c.classify(data=c.rows("holes.jsonl", [
        {"text": "" if i == 3 else f"good {i}", "label": ["a", "b"][i % 2]} for i in range(20)])),
        ("no value in column 'text'", "holes.jsonl line 4")),
    "eval-split-missing": lambda c: (c.classify("--eval-split", "nope"), ("no split 'nope'",)),
    "train-split-missing": lambda c: (c.classify("--train-split", "nope"), ("no split 'nope'",)),
    "eval-split-is-train": lambda c: (c.classify("--eval-split", "train"), ("must not be trained on",)),
    "labels-spelled-twice": lambda c: (c.classify(data=c.rows("clash.jsonl", [
        {"text": f"t {i}", "label": ["1", "1.0", "2"][i % 3]} for i in range(30)])), ("spells one label",
                                                                                       "'1' and '1.0'")),
    "folder-without-data": lambda c: (c.classify(data=_folder_with(c, "nodata", {"notes.md": "x"})),
                                      ("holds no data files",)),
    "folder-mixed-types": lambda c: (c.classify(data=_folder_with(c, "mixed", {"train.csv": "text,label\na,1\n",
                                                                                 "test.jsonl": '{"text":"b"}\n'})),
                                     ("mixes file types",)),
    "squad-negative-start": lambda c: (["qa", "--model", c.bert, "--data", c.rows("neg.jsonl", [
        dict(r, answers={"text": r["answers"]["text"], "answer_start": [-3]}) for r in qa_rows(8, seed=1)]),
        "--output-dir", c.tmp / "run", *STEPS], ("answer_start -3 is negative",)),
    "qa-question-leaves-no-room": lambda c: (["qa", "--model", c.bert, "--data", c.rows("q.jsonl", qa_rows(8, 2)),
                                              "--output-dir", c.tmp / "run", "--max-length", "24", "--doc-stride",
                                              "16", "--max-steps", "1"], ("raise --max-length",)),
    # ---- models -------------------------------------------------------------------------------------
    "hub-model-uncached": lambda c: (["classify", "--model", "some-org/not-cached", "--data", c.data,
                                      "--output-dir", c.tmp / "run"], ("not in the local cache", "local model")),
    "hub-dataset-uncached": lambda c: (c.classify(data="some-org/not-a-cached-dataset"),
                                       ("not in the local cache", "--data")),
    "model-path-missing": lambda c: (["classify", "--model", c.tmp / "no-model", "--data", c.data],
                                     ("does not exist",)),
    "max-length-above-positions": lambda c: (c.classify("--max-length", "1000"), ("--max-length 1000", "512")),
    "qa-max-length-above-positions": lambda c: (["qa", "--model", c.bert, "--data", c.rows("q.jsonl", qa_rows(8, 2)),
                                                 "--max-length", "600"], ("512",)),
    "adapter-as-model": lambda c: (["classify", "--model", c.runs / "lora", "--data", c.data, "--output-dir",
                                    c.tmp / "run"], ("LoRA adapter", "ftune merge")),
    "lm-block-size-above-context": lambda c: (["lm", "--model", c.gpt2, "--data", c.file("t.txt", "a b c\n" * 20),
                                               "--block-size", "4096"], ("context of 256",)),
    # ---- the output folder --------------------------------------------------------------------------
    "output-folder-of-the-user": lambda c: (c.classify(out="mine") if _folder_with(c, "mine", {"notes.txt": "x"})
                                            else [], ("did not write", "mine")),
    "users-own-ftune-yaml": lambda c: (c.classify(out="proj") if _folder_with(c, "proj", {"ftune.yaml": "a: 1\n",
                                                                                           "code.py": "x"})
                                       else [], ("did not write",)),
    "users-own-ftune-yaml-overwrite": lambda c: (c.classify("--overwrite", out="proj2") if _folder_with(
        c, "proj2", {"ftune.yaml": "a: 1\n", "data.csv": "x"}) else [], ("did not write",)),
    "output-is-a-file": lambda c: (c.classify(out="afile") if c.file("afile", "x") else [], ("is a file",)),
    "finished-run-without-overwrite": lambda c: (["classify", "--model", c.bert, "--data", c.data, "--output-dir",
                                                  c.runs / "full", *STEPS], ("finished run", "--overwrite")),
    "overwrite-with-bad-data": lambda c: (["classify", "--model", c.bert, "--data", c.tmp / "typo.csv",
                                           "--output-dir", c.runs / "full", "--overwrite"], ("does not exist",)),
    "overwrite-with-bad-option": lambda c: (["classify", "--model", c.bert, "--data", c.data, "--output-dir",
                                             c.runs / "full", "--overwrite", "--label-column", "nope"],
                                            ("'nope'",)),
    "resume-with-another-lr": lambda c: (["classify", "--model", c.bert, "--data", c.data, "--output-dir",
                                          _interrupted(c), *STEPS, "--lr", "0.5", "--resume"],
                                         ("--resume", "lr (run:", "now: 0.5")),
    # ---- commands that use a run --------------------------------------------------------------------
    "eval-missing-run": lambda c: (["eval", c.tmp / "nothing"], ("does not exist",)),
    "eval-not-a-run": lambda c: (["eval", _folder_with(c, "notrun", {"a.txt": "x"})], ("not an ftune run",)),
    "eval-unfinished-run": lambda c: (["eval", _interrupted(c)], ("did not finish", "--resume")),
    "eval-data-unknown-labels": lambda c: (["eval", c.runs / "full", "--data", c.rows("u.jsonl", sentiment_rows(
        6, labels=("negative", "positive", "neutral")))], ("never learned", "neutral")),
    "eval-data-missing-column": lambda c: (["eval", c.runs / "full", "--data", c.rows("nc.jsonl", [
        {"body": "x", "label": "positive"}])], ("no column",)),
    "eval-of-a-split-that-is-not-there": lambda c: (["eval", c.runs / "full", "--split", "nope"],
                                                    ("no split 'nope'",)),
    "eval-output-into-another-run": lambda c: (["eval", c.runs / "full", "--output-dir", c.runs / "lora"],
                                               ("holds an ftune run",)),
    "eval-output-into-user-folder": lambda c: (["eval", c.runs / "full", "--output-dir",
                                                _folder_with(c, "results", {"mine.csv": "x"})], ("did not write",)),
    "predict-empty-cell": lambda c: (["predict", c.runs / "full", "--input", c.rows("in.jsonl", [
        {"text": "good"}, {"text": "  "}, {"text": "bad"}])], ("in.jsonl line 2", "no text")),
    "predict-flag-of-another-task": lambda c: (["predict", c.runs / "full", "--question", "why?"],
                                               ("--question does not apply to classify runs",)),
    "predict-nothing": lambda c: (["predict", c.runs / "full"], ("nothing to predict",)),
    "predict-output-suffix": lambda c: (["predict", c.runs / "full", "--text", "a", "--output", c.tmp / "o.txt"],
                                        (".jsonl or .csv",)),
    "predict-pair-count": lambda c: (["predict", c.runs / "full", "--text", "a", "--text-pair", "b",
                                      "--text-pair", "c"], ("--text-pair",)),
    "generate-empty-prompt": lambda c: (["generate", "--model", c.gpt2, "--prompt", " "], ("empty",)),
    "generate-no-room": lambda c: (["generate", "--model", c.gpt2, "--prompt", "a", "--max-new-tokens", "300"],
                                   ("no room", "255")),
    "generate-classify-run": lambda c: (["generate", "--model", c.runs / "full", "--prompt", "a"],
                                        ("does not generate text",)),
    "generate-prompts-file-missing": lambda c: (["generate", "--model", c.gpt2, "--prompts-file", c.tmp / "p.txt"],
                                                ("does not exist",)),
    "merge-full-run": lambda c: (["merge", c.runs / "full", "--output-dir", c.tmp / "m"], ("full fine-tune",)),
    "merge-into-base-model": lambda c: (["merge", c.runs / "lora", "--output-dir", c.bert, "--overwrite"],
                                        ("must not replace",)),
    "merge-into-the-run": lambda c: (["merge", c.runs / "lora", "--output-dir", c.runs / "lora", "--overwrite"],
                                     ("must not replace",)),
    "merge-into-a-folder-holding-the-run": lambda c: (["merge", c.runs / "lora", "--output-dir", c.runs,
                                                       "--overwrite"], ("must not replace",)),
    "merge-into-user-folder": lambda c: (["merge", c.runs / "lora", "--output-dir",
                                          _folder_with(c, "models", {"w.bin": "x"}), "--overwrite"],
                                         ("did not write",)),
    "merge-again-without-overwrite": lambda c: (["merge", c.runs / "lora", "--output-dir", c.runs / "merged"],
                                                ("--overwrite",)),
    "lora-adapter-deleted": lambda c: (["eval", _without_adapter(c)], ("no adapter weights",)),
    "recipe-unknown": lambda c: (["recipes", "nope"], ("no recipe named 'nope'",)),
}


def _splits(c: Ctx) -> Path:
    folder = c.tmp / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", sentiment_rows(20))
    write_jsonl(folder / "test.jsonl", sentiment_rows(9, labels=("negative", "positive", "neutral")))
    return folder


def _without_adapter(c: Ctx) -> Path:
    run = c.copy_run("lora")
    (run / "adapter_model.safetensors").unlink()
    return run


def test_the_suite_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, runs, tiny_bert, tiny_gpt2, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(40))
    ctx = Ctx(tmp=tmp_path, runs=runs, bert=tiny_bert, gpt2=tiny_gpt2, data=data)
    args, fragments = CASES[case](ctx)
    before = tree_digest(tmp_path, runs, tiny_bert)
    result = invoke(*args)
    assert_usage_error(result, *fragments)
    assert tree_digest(tmp_path, runs, tiny_bert) == before, "bad input changed files on disk"


def test_uncached_hub_model_fails_fast_offline(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(10))
    started = time.time()
    result = invoke("classify", "--model", "some-org/not-a-cached-model", "--data", data)
    assert result.exit_code == 2
    assert time.time() - started < 30  # generous: it must not sit in network retries


def test_debug_shows_the_traceback(tiny_bert, tmp_path):
    with pytest.raises(Exception) as info:
        invoke("classify", "--model", tiny_bert, "--data", tmp_path / "nope.csv", "--debug")
    assert "does not exist" in str(info.value)


def test_invalid_values_are_all_reported_at_once(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(10))
    line = assert_usage_error(invoke("classify", "--model", tiny_bert, "--data", data, "--val-fraction", "1.5",
                                     "--precision", "fp8", "--set", "lora_rank=4"),
                              "--val-fraction", "--precision", "lora_rank")
    assert "lora_r" in line  # a close match is suggested


def test_a_held_out_row_with_a_mistake_is_named_by_its_id(tiny_bert, tmp_path):
    rows = sentiment_rows(20)
    rows[5]["text"] = None
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--val-fraction", "0.5", "--seed", "1",
                    "--output-dir", tmp_path / "run")
    line = assert_usage_error(result, "no value in column 'text'")
    assert "id r5" in line  # the data has an id column: that names the row
    assert not (tmp_path / "run").exists()
