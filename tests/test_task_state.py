"""A task's state: one typed class per task, saved in ftune.yaml in the form runs have always had (so runs written
before it was typed still open), read back by `open_run`, and compared field by field by `--resume`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

# The states runs of each task wrote under `run: state:` before the state was typed (the on-disk form, key order
# included): every one must still read, and write back the same.
SAVED = {
    "classify": {"columns": {"text": "text", "text_pair": None, "label": "label"}, "problem_type": "single-label",
                 "labels": ["mid", "neg", "pos"],
                 "class_weights": {"mid": 0.8181818181818182, "neg": 1.3846153846153846, "pos": 0.9473684210526315}},
    "lm": {"columns": {"text": None, "prompt": "prompt", "completion": "completion", "messages": None},
           "mode": "completion", "context": 256, "block_size": 256, "max_length": 32},
    "qa": {"columns": {"question": "question", "context": "context", "answers": "answers", "answer_start": None},
           "version_2": True},
    "summarize": {"columns": {"source": "document", "target": "summary"}, "source_prefix": "summarize: ",
                  "model_type": "t5", "source_limit": None},
    "ner": {"columns": {"tokens": "tokens", "tags": "tags"}, "labels": ["B-LOC", "B-PER", "I-PER", "O"]},
    "translate": {"columns": {"source": "source", "target": "target"}, "source_prefix": "", "model_type": "m2m_100",
                  "source_limit": 256, "layout": "columns", "source_lang": "eng_Latn", "target_lang": "fra_Latn",
                  "tokenizer_languages": {"src_lang": "eng_Latn", "tgt_lang": "fra_Latn"},
                  "generation": {"forced_bos_token_id": 357}},
    "dpo": {"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "chat": False, "context": 256,
            "max_length": 64},
}


def _task(name):
    from ftune.tasks import get_task

    return get_task(name)


@pytest.mark.parametrize("name", sorted(SAVED))
def test_each_task_reads_and_writes_the_state_runs_have_always_saved(name):
    task = _task(name)
    state = task.state_class.from_dict(SAVED[name])
    assert type(state) is task.state_class and state.columns == SAVED[name]["columns"]
    assert yaml.safe_dump(state.to_dict(), sort_keys=False) == yaml.safe_dump(SAVED[name], sort_keys=False)


def test_fields_saved_only_when_set_stay_out_of_the_file():
    regression = {"columns": {"text": "text", "text_pair": None, "label": "score"}, "problem_type": "regression"}
    state = _task("classify").state_class.from_dict(regression)
    assert state.labels is None and state.class_weights is None and state.to_dict() == regression
    t5 = {**{k: v for k, v in SAVED["translate"].items() if k not in ("tokenizer_languages", "generation")},
          "source_lang": None, "target_lang": None}
    assert _task("translate").state_class.from_dict(t5).to_dict() == t5


def test_a_run_made_before_problem_types_is_single_label():
    old = {k: v for k, v in SAVED["classify"].items() if k != "problem_type"}
    assert _task("classify").state_class.from_dict(old).problem_type == "single-label"


def test_values_are_read_as_their_fields_types():
    weights = {**SAVED["classify"], "class_weights": {"mid": 1, "neg": 2, "pos": 3}}   # YAML ints where floats go
    read = _task("classify").state_class.from_dict(weights).class_weights
    assert read == {"mid": 1.0, "neg": 2.0, "pos": 3.0} and all(type(w) is float for w in read.values())
    state_class = _task("ner").state_class
    with pytest.raises(ValueError, match="^no labels$"):
        state_class.from_dict({"columns": SAVED["ner"]["columns"]})
    with pytest.raises(ValueError, match="labels: 'B-LOC' is not a list of text"):
        state_class.from_dict({**SAVED["ner"], "labels": "B-LOC"})
    with pytest.raises(ValueError, match="version_2: 'yes' is not true or false"):
        _task("qa").state_class.from_dict({**SAVED["qa"], "version_2": "yes"})
    with pytest.raises(ValueError, match="not a mapping"):
        state_class.from_dict(["labels"])


def _fake_run(folder, name: str, state: dict) -> None:
    """A finished run's files as far as open_run reads them: ftune.yaml (options and state) and the end marker."""
    folder.mkdir()
    (folder / "ftune.yaml").write_text(yaml.safe_dump({"data": "rows.jsonl", "run": {"task": name, "state": state}}))
    (folder / "train_results.json").write_text("{}\n")


def test_open_run_gives_the_typed_state_and_names_a_damaged_one(tmp_path):
    from ftune.errors import UsageError
    from ftune.rundir import open_run

    _fake_run(tmp_path / "good", "ner", SAVED["ner"])
    run = open_run(tmp_path / "good")
    assert run.state.labels == SAVED["ner"]["labels"] and run.state.columns["tags"] == "tags"
    _fake_run(tmp_path / "bad", "ner", {**SAVED["ner"], "labels": None})
    with pytest.raises(UsageError, match=r"ftune.yaml holds a ner state that ftune cannot read \(labels: None is not "
                                         r"a list of text\); .*restore its ftune.yaml or retrain it"):
        open_run(tmp_path / "bad")


def test_resume_compares_the_state_field_by_field(tmp_path):
    import dataclasses

    from ftune.config import resolve_config
    from ftune.errors import UsageError
    from ftune.rundir import RunDir
    from ftune.train import check_resume_matches

    task = _task("ner")
    config = resolve_config(task.options_class, layers=[("test", {"data": "rows.jsonl"})])
    saved = task.state_class.from_dict(SAVED["ner"])
    RunDir(tmp_path).write_config(task.name, config, saved, "fp32")
    (tmp_path / "split.json").write_text(json.dumps({"fingerprint": "f"}))
    assert yaml.safe_load((tmp_path / "ftune.yaml").read_text())["run"]["state"] == SAVED["ner"]

    def prepared(state):
        return SimpleNamespace(state=state, split=SimpleNamespace(record={"fingerprint": "f"}))

    check_resume_matches(tmp_path, task, config, prepared(task.state_class.from_dict(SAVED["ner"])))
    other = dataclasses.replace(saved, labels=["B-LOC", "O"])
    with pytest.raises(UsageError, match=r"labels derived from the data \(run: \['B-LOC', 'B-PER', 'I-PER', 'O'\], "
                                         r"now: \['B-LOC', 'O'\]\)"):
        check_resume_matches(tmp_path, task, config, prepared(other))
