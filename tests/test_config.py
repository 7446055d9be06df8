"""Configuration: defaults < --config YAML < flags < --set; every problem reported at once."""

from __future__ import annotations

import pytest
import yaml

from ftune.config import coerce, parse_set_options, resolve_config
from ftune.errors import UsageError
from ftune.tasks.classify import ClassifyOptions
from ftune.tasks.lm import LMOptions


def test_precedence_of_layers():
    config = resolve_config(ClassifyOptions, layers=[
        ("yaml", {"data": "a.csv", "lr": 1e-4, "epochs": 5, "batch_size": 4}),
        ("flags", {"lr": 2e-4, "epochs": 2.0}),
        ("--set", {"epochs": 7}),
    ])
    assert config.data == "a.csv"            # from YAML only
    assert config.batch_size == 4            # YAML over default
    assert config.lr == 2e-4                 # flag over YAML
    assert config.epochs == 7                # --set over flag
    assert config.seed == 42                 # default


def test_task_defaults():
    assert resolve_config(ClassifyOptions, layers=[("flags", {"data": "x"})]).model == "bert-base-uncased"
    assert resolve_config(LMOptions, layers=[("flags", {"data": "x"})]).model == "gpt2"


def test_learning_rate_default_depends_on_lora():
    full = resolve_config(ClassifyOptions, layers=[("flags", {"data": "x"})])
    lora = resolve_config(ClassifyOptions, layers=[("flags", {"data": "x", "lora": True})])
    assert full.learning_rate == 5e-5 and lora.learning_rate == 2e-4


def test_every_problem_reported_once():
    with pytest.raises(UsageError) as info:
        resolve_config(ClassifyOptions, layers=[("yaml", {"data": "x", "batch_sise": 8, "lr": "fast",
                                                         "precision": "fp8", "val_fraction": 0})])
    message = str(info.value)
    assert "batch_sise" in message and "did you mean 'batch_size'" in message
    assert "--lr" in message and "--precision" in message and "--val-fraction" in message
    assert "\n" not in message


def test_set_values_are_yaml_scalars():
    layer = parse_set_options(["lr=1e-4", "lora=true", "lora_targets=[query, value]", "eval_split=null"])
    config = resolve_config(ClassifyOptions, layers=[("flags", {"data": "x"}), ("--set", layer)])
    assert config.lr == 1e-4 and config.lora is True and config.lora_targets == ["query", "value"]
    assert config.eval_split is None
    with pytest.raises(UsageError, match="key=value"):
        parse_set_options(["lr"])


def test_coerce_rejects_wrong_types():
    import typing

    with pytest.raises(ValueError):
        coerce(True, int, {})
    with pytest.raises(ValueError):
        coerce(2.5, int, {})
    with pytest.raises(ValueError):
        coerce("maybe", bool, {})
    assert coerce("3", int, {}) == 3
    assert coerce("a, b", typing.Optional[list[str]], {}) == ["a", "b"]


def test_config_file_and_flags_through_the_cli(ftune, tiny_bert, tmp_path):
    from tests.test_classify import sentiment_rows, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(40))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_bert), "data": str(data), "max_steps": 2, "batch_size": 4,
                                      "lr": 1e-3, "seed": 7}))
    out = tmp_path / "run"
    result = ftune("classify", "--config", recipe, "--batch-size", "8", "--set", "seed=3", "--output-dir", out)
    assert result.exit_code == 0, result
    saved = yaml.safe_load((out / "ftune.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["seed"] == 3 and saved["lr"] == 1e-3 and saved["max_steps"] == 2
    # ftune.yaml is itself a valid --config: the run can be repeated from it.
    again = ftune("classify", "--config", out / "ftune.yaml", "--output-dir", tmp_path / "again")
    assert again.exit_code == 0, again
    assert (tmp_path / "again" / "eval_results.json").read_text() == (out / "eval_results.json").read_text()


def test_unknown_yaml_key_is_an_error(ftune, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: x.csv\nlearning_rate: 0.1\n")
    result = ftune("classify", "--config", recipe)
    assert result.exit_code == 2 and "unknown key 'learning_rate'" in result.stderr
