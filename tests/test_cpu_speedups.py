"""The CPU speed-ups behind their one door (ftune.cpu): what it applies, that it undoes all of it, and the
`--no-cpu-speedups` switch (recorded in ftune.yaml, compared by --resume, defaulted by FTUNE_CPU_SPEEDUPS)."""

from __future__ import annotations

import types

import pytest
import yaml

from tests.conftest import invoke
from tests.test_classify import sentiment_rows, write_jsonl

STEPS = ["--max-steps", "4", "--batch-size", "8", "--max-length", "32", "--precision", "fp32", "--seed", "1",
         "--eval-steps", "2"]


@pytest.fixture(scope="module")
def sentiment_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(60))


def _trainer(model, device="cpu", **args):
    """What the door reads of a Trainer: its model, its arguments and its training step."""

    class Trainer:
        def training_step(self, *inputs):
            import torch

            return torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)

    trainer = Trainer()
    trainer.model = model
    trainer.args = types.SimpleNamespace(device=types.SimpleNamespace(type=device), torch_compile=False,
                                         activation_checkpointing=False, **args)
    return trainer


def _state(trainer):
    base = trainer.model
    layer = base.bert.encoder.layer[-1] if hasattr(base, "bert") else None
    return (base.config._attn_implementation, layer is not None and "forward" in layer.__dict__,
            "training_step" in trainer.__dict__)


@pytest.fixture
def masks(monkeypatch):
    """Counts the masks ftune's dropout draws."""
    import ftune.cpu.dropout

    drawn = []
    own = ftune.cpu.dropout.scaled_mask

    def counting(*args, **kwargs):
        drawn.append(args[0])
        return own(*args, **kwargs)

    monkeypatch.setattr(ftune.cpu.dropout, "scaled_mask", counting)
    return drawn


def test_the_door_applies_what_fits_and_undoes_all_of_it_also_when_training_raises(tiny_bert, masks):
    from transformers import AutoModelForSequenceClassification

    from ftune.cpu import cpu_speedups

    trainer = _trainer(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2))
    assert _state(trainer) == ("sdpa", False, False)
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_speedups(trainer):
            assert _state(trainer) == ("eager", True, True)
            trainer.training_step()
            assert len(masks) == 1  # the training step's dropout is ftune's
            raise RuntimeError("boom")
    assert _state(trainer) == ("sdpa", False, False)
    trainer.training_step()
    assert len(masks) == 1  # PyTorch's again
    with cpu_speedups(trainer):
        pass
    assert _state(trainer) == ("sdpa", False, False)


@pytest.mark.parametrize("case", ["off", "gpu"])
def test_the_door_changes_nothing_when_off_or_not_on_a_cpu(tiny_bert, masks, case):
    from transformers import AutoModelForSequenceClassification

    from ftune.cpu import cpu_speedups

    trainer = _trainer(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2),
                       device="cuda" if case == "gpu" else "cpu")
    with cpu_speedups(trainer, enabled=case != "off"):
        assert _state(trainer) == ("sdpa", False, False)
        trainer.training_step()
    assert masks == []


def test_models_that_generate_keep_their_attention(tiny_gpt2, masks):
    from transformers import AutoModelForCausalLM

    from ftune.cpu import cpu_speedups

    trainer = _trainer(AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)))
    own = trainer.model.config._attn_implementation
    with cpu_speedups(trainer):
        assert trainer.model.config._attn_implementation == own
        trainer.training_step()
    assert len(masks) == 1  # ftune's dropout serves every model


def test_recomputed_activations_keep_pytorchs_dropout(tiny_bert, masks):
    from transformers import AutoModelForSequenceClassification

    from ftune.cpu import cpu_speedups

    trainer = _trainer(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2))
    trainer.args.activation_checkpointing = True
    with cpu_speedups(trainer):
        assert _state(trainer) == ("eager", True, False)
        trainer.training_step()
    assert masks == []


def _recording_training_steps(monkeypatch):
    """Records, at each training step and each evaluation, the attention the model runs and the masks drawn."""
    import transformers

    import ftune.cpu.dropout

    seen = {"steps": [], "evaluations": [], "masks": 0}
    own_mask, own_step, own_evaluate = (ftune.cpu.dropout.scaled_mask, transformers.Trainer.training_step,
                                        transformers.Trainer.evaluate)

    def mask(*args, **kwargs):
        seen["masks"] += 1
        return own_mask(*args, **kwargs)

    def training_step(self, model, *args, **kwargs):
        seen["steps"].append(model.config._attn_implementation)
        return own_step(self, model, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        before = seen["masks"]
        try:
            return own_evaluate(self, *args, **kwargs)
        finally:
            seen["evaluations"].append(seen["masks"] - before)

    monkeypatch.setattr(ftune.cpu.dropout, "scaled_mask", mask)
    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    monkeypatch.setattr(transformers.Trainer, "evaluate", evaluate)
    return seen


@pytest.mark.parametrize("switch", ["--cpu-speedups", "--no-cpu-speedups"])
def test_the_switch_decides_dropout_and_attention_and_is_recorded(tiny_bert, sentiment_file, tmp_path, monkeypatch,
                                                                   switch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU speed-ups apply on CPUs only")
    seen = _recording_training_steps(monkeypatch)
    run = tmp_path / "run"
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", run, *STEPS, switch)
    assert result.exit_code == 0, result
    on = switch == "--cpu-speedups"
    assert seen["steps"] == ["eager" if on else "sdpa"] * 4  # sdpa: the tiny model's own
    assert (seen["masks"] > 0) == on  # ftune's dropout masks, or PyTorch's own dropout
    assert seen["evaluations"] == [0, 0]  # the evaluations during training draw no masks
    saved = yaml.safe_load((run / "ftune.yaml").read_text())
    assert saved["cpu_speedups"] is on
    assert yaml.safe_load((run / "config.json").read_text()).get("_attn_implementation") in (None, "sdpa")


def test_the_environment_sets_the_default_with_a_note_and_resume_compares_it(tiny_bert, sentiment_file, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("FTUNE_CPU_SPEEDUPS", "0")
    run = tmp_path / "run"
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", run, *STEPS)
    assert result.exit_code == 0, result
    assert "FTUNE_CPU_SPEEDUPS=0 in the environment: --no-cpu-speedups is the default" in result.output
    assert yaml.safe_load((run / "ftune.yaml").read_text())["cpu_speedups"] is False
    (run / "train_results.json").unlink()  # the run looks interrupted: --resume would continue it
    monkeypatch.delenv("FTUNE_CPU_SPEEDUPS")
    refused = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", run, *STEPS,
                     "--cpu-speedups", "--resume")
    assert refused.exit_code == 2, refused
    assert "cpu_speedups (run: False, now: True)" in refused.output
    # A run written before the option existed trained with the speed-ups: its ftune.yaml lacks the key.
    saved = yaml.safe_load((run / "ftune.yaml").read_text())
    del saved["cpu_speedups"]
    (run / "ftune.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    refused = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", run, *STEPS,
                     "--no-cpu-speedups", "--resume")
    assert refused.exit_code == 2, refused
    assert "cpu_speedups (run: True, now: False)" in refused.output


def test_a_bad_environment_value_is_an_error_naming_it(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CPU_SPEEDUPS", "maybe")
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", tmp_path / "run",
                    *STEPS)
    assert result.exit_code == 2, result
    assert "FTUNE_CPU_SPEEDUPS" in result.output and "expected true or false" in result.output


def test_a_sweep_made_before_the_option_existed_had_its_default():
    from ftune.config import default_of
    from ftune.sweep.study import META_KEY, study_differences
    from ftune.tasks import get_task

    task = get_task("classify")
    meta = {"task": "classify", "params": {}, "metric": "f1", "direction": "maximize", "sampler": "tpe",
            "held_out": None, "options": {"lr": 0.001, "cpu_speedups": True}}
    recorded = {**meta, "options": {"lr": 0.001}}
    study = types.SimpleNamespace(user_attrs={META_KEY: recorded})
    assert study_differences(study, meta, lambda key: default_of(task.options_class, key)) == []
    off = {**meta, "options": {"lr": 0.001, "cpu_speedups": False}}
    assert study_differences(study, off, lambda key: default_of(task.options_class, key)) == [
        "cpu_speedups (sweep: True, now: False)"]


@pytest.mark.parametrize(("argv", "environment", "applied"), [
    (["classify"], None, True), (["classify", "--no-cpu-speedups"], None, False), (["classify"], "0", False),
    (["classify", "--cpu-speedups"], "0", True), (["classify", "--cpu-speedups", "--no-cpu-speedups"], None, False)])
def test_the_process_settings_follow_the_command_line_and_the_environment(monkeypatch, argv, environment, applied):
    import gc

    import ftune.cpu.memory
    from ftune.cpu import process_speedups

    if environment is None:
        monkeypatch.delenv("FTUNE_CPU_SPEEDUPS", raising=False)
    else:
        monkeypatch.setenv("FTUNE_CPU_SPEEDUPS", environment)
    kept = []
    monkeypatch.setattr(ftune.cpu.memory, "keep_freed_memory", lambda: kept.append(True))
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        with process_speedups(argv):
            assert (gc.get_threshold()[0] == 20_000) == applied and bool(kept) == applied
        assert (gc.get_freeze_count() > frozen) == applied  # the last collection is skipped at exit
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
