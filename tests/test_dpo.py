"""`ftune dpo` end to end on a tiny GPT-2: TRL's loss, per-pair figures that re-compute the totals, the reference
model (a frozen copy, precomputed, the adapter disabled, an SFT run merged), the data layouts and their checks, and a
DPO run wherever an lm run goes (eval, generate, resume, sweep)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from pathlib import Path

import pytest

from tests import tiny_models
from tests.conftest import invoke, read_json, read_jsonl

FAST = ("--max-steps", "8", "--batch-size", "8", "--lr", "2e-3", "--logging-steps", "2", "--max-length", "64",
        "--precision", "fp32")  # fp32 on every CPU: tests compare figures
LINE_FIELDS = {"id", "prediction", "reference", "margin", "reward_chosen", "reward_rejected", "logps_chosen",
               "logps_rejected", "ref_logps_chosen", "ref_logps_rejected", "loss"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def repeat_pairs(n: int, seed: int = 0) -> list[dict]:
    """'repeat W:' -> ' W W.' is chosen over another word twice: learnable by a tiny model in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word, other = rng.sample(tiny_models.WORDS, 2)
        rows.append({"id": f"p{i}", "prompt": f"repeat {word}:", "chosen": f" {word} {word}.",
                     "rejected": f" {other} {other}."})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dpo-data")
    pairs = repeat_pairs(64)
    chat = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]} for r in pairs]
    ultrafeedback = [{"prompt": r["prompt"], "prompt_id": str(i), "score_chosen": 8.0, "score_rejected": 2.0,
                      "chosen": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["chosen"].strip()}],
                      "rejected": [{"role": "user", "content": r["prompt"]},
                                   {"role": "assistant", "content": r["rejected"].strip()}]}
                     for i, r in enumerate(pairs)]
    hh = [{"chosen": f"\n\nHuman: {r['prompt']}\n\nAssistant:{r['chosen']}",
           "rejected": f"\n\nHuman: {r['prompt']}\n\nAssistant:{r['rejected']}"} for r in pairs]
    return {"pairs": write_jsonl(folder / "pairs.jsonl", pairs), "chat": write_jsonl(folder / "chat.jsonl", chat),
            "hh": write_jsonl(folder / "hh.jsonl", hh),
            "ultrafeedback": write_jsonl(folder / "ultrafeedback.jsonl", ultrafeedback),
            "sft": write_jsonl(folder / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]}
                                                      for r in pairs])}


def dpo(out: Path, *args) -> Path:
    result = invoke("dpo", "--output-dir", out, *args)
    assert result.exit_code == 0, result
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_gpt2, data) -> Path:
    return dpo(tmp_path_factory.mktemp("runs") / "full", "--model", tiny_gpt2, "--data", data["pairs"], *FAST)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_gpt2, data) -> Path:
    return dpo(tmp_path_factory.mktemp("runs") / "lora", "--model", tiny_gpt2, "--data", data["pairs"], "--lora",
               *FAST)


# --------------------------------------------------------------------------------------------------
# The loss: TRL's, and the formula


def test_pair_losses_are_the_formulas_by_hand():
    """Each pair's loss from its log-probabilities, computed by hand (sigmoid, hinge, ipo), equals pair_losses."""
    import torch

    from ftune.tasks.dpo.trainer import Preference, pair_losses

    # policy chosen, policy rejected, reference chosen, reference rejected, chosen tokens, rejected tokens
    figures = torch.tensor([[-10.0, -14.0, -11.0, -12.5, 4, 5], [-20.0, -9.0, -19.0, -10.0, 3, 2],
                            [-7.5, -7.5, -7.0, -7.0, 2, 2]], dtype=torch.float64)
    beta = 0.3
    for row, (pc, pr, rc, rr, nc, nr) in enumerate(figures.tolist()):
        delta = (pc - rc) - (pr - rr)
        by_hand = {"sigmoid": math.log1p(math.exp(-beta * delta)),
                   "hinge": max(0.0, 1 - beta * delta),
                   "ipo": ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2}
        for loss, expected in by_hand.items():
            got = float(pair_losses(Preference(beta=beta, loss=loss), figures)[row])
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (loss, row)


def trl_eval_loss(policy: Path, reference: Path, rows: list[dict], *, loss: str, beta: float, smoothing: float,
                  scratch: Path) -> float:
    """TRL's DPOTrainer used directly, as its docs show, on the pairs: its evaluation loss in one batch."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    args = DPOConfig(output_dir=str(scratch), per_device_eval_batch_size=len(rows), beta=beta, loss_type=[loss],
                     label_smoothing=smoothing, max_length=64, report_to="none", use_cpu=True, bf16=False,
                     activation_checkpointing=False)
    pairs = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy),
                         ref_model=AutoModelForCausalLM.from_pretrained(reference), args=args, train_dataset=pairs,
                         eval_dataset=pairs, processing_class=tokenizer)
    return trainer.evaluate()["eval_loss"]


def test_loss_equals_trls_dpo_trainer_for_every_loss_type(full_run, tiny_gpt2, tmp_path):
    """On the held-out pairs of a trained run (policy: the run, reference: the model it started from), the mean of
    ftune's per-pair losses equals TRL's DPOTrainer's evaluation loss, for every loss type ftune takes; the training
    loss is TRL's own compute_loss."""
    from ftune.data import reload_held_out_split
    from ftune.engines import open_engine
    from ftune.rundir import open_run
    from ftune.tasks.dpo import PAIRWISE_LOSSES
    from ftune.tasks.dpo.trainer import PreferenceTrainer
    from trl import DPOTrainer

    assert PreferenceTrainer.compute_loss is DPOTrainer.compute_loss
    run = open_run(full_run)
    rows, ids = reload_held_out_split(run.split, lambda s, c: run.task.load_source(run.config, s, c))
    differences = {}
    with open_engine(run, batch_size=None) as engine:
        for loss in PAIRWISE_LOSSES:
            smoothing = 0.1 if loss in ("robust", "exo_pair") else 0.0
            options = dataclasses.replace(run.config.task_options, loss=loss, beta=0.2, label_smoothing=smoothing)
            config = run.config.replace(task_options=options)
            ours = run.task.evaluate(config, engine.scorer(config), engine.tokenizer, run.state, rows,
                                     ids).metrics["eval_loss"]
            theirs = trl_eval_loss(full_run, tiny_gpt2, rows.to_list(), loss=loss, beta=0.2, smoothing=smoothing,
                                   scratch=tmp_path / loss)
            if not ours == pytest.approx(theirs, rel=1e-5, abs=1e-7):
                differences[loss] = (ours, theirs)
    assert not differences


def test_training_steps_equal_trls_dpo_trainer(tiny_gpt2, tmp_path):
    """ftune dpo and TRL's DPOTrainer (used directly, same model, pairs and settings) train alike: the loss and
    reward margin logged at the second step (after one update of the same batch: all the training pairs) agree."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = repeat_pairs(24, seed=3)
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "validation.jsonl", rows[16:])
    run = dpo(tmp_path / "run", "--model", tiny_gpt2, "--data", folder, "--max-steps", "2", "--batch-size", "16",
              "--lr", "1e-3", "--beta", "0.2", "--max-length", "64", "--logging-steps", "1", "--precision", "fp32")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=16, max_steps=2,
                     learning_rate=1e-3, beta=0.2, max_length=64, optim="adamw_torch_fused", logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False)
    pairs = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:16]])
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_gpt2),
                         ref_model=AutoModelForCausalLM.from_pretrained(tiny_gpt2), args=args,
                         train_dataset=pairs, processing_class=AutoTokenizer.from_pretrained(tiny_gpt2))
    trainer.train()
    theirs = [e for e in trainer.state.log_history if "loss" in e]
    ours = [e for e in read_json(run / "trainer_state.json")["log_history"] if "loss" in e]
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [1, 2]
    assert ours[1]["loss"] == pytest.approx(theirs[1]["loss"], rel=1e-5)
    assert ours[1]["loss"] < math.log(2) - 0.01  # the update moved the policy: the comparison is not trivial
    assert ours[1]["rewards_margin"] == pytest.approx(theirs[1]["rewards/margins"], rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# A full run: its files and per-pair figures


def test_full_run_writes_a_preference_run(full_run, tiny_gpt2):
    config = read_json(full_run / "train_results.json")
    assert config["train_samples"] > 0
    assert {"model.safetensors", "config.json", "ftune.yaml", "split.json", "eval_results.json",
            "eval_predictions.jsonl", "learning_curves.png", "reward_margins.png",
            "README.md"} <= {p.name for p in full_run.iterdir()}
    assert not list(full_run.glob("checkpoint-*")) and not (full_run / "ref").exists()
    metrics = read_json(full_run / "eval_results.json")
    assert set(metrics) == {"eval_loss", "eval_rewards_accuracy", "eval_rewards_margin", "eval_rewards_chosen",
                            "eval_rewards_rejected", "eval_logps_chosen", "eval_logps_rejected", "eval_samples"}
    card = (full_run / "README.md").read_text()
    assert f"**Preference-tuned (DPO) from** `{tiny_gpt2}`" in card and "reward_margins.png" in card
    history = read_json(full_run / "trainer_state.json")["log_history"]
    assert any("rewards_accuracy" in e for e in history) and any("eval_rewards_accuracy" in e for e in history)


def test_the_lines_recompute_the_totals(full_run):
    """Every eval_ figure is the mean of the lines; each line's margin, rewards, prediction and sigmoid loss follow
    from its own log-probabilities."""
    lines = read_jsonl(full_run / "eval_predictions.jsonl")
    metrics = read_json(full_run / "eval_results.json")
    beta = 0.1
    assert metrics["eval_samples"] == len(lines) and all(set(line) == LINE_FIELDS for line in lines)
    assert [line["id"] for line in lines] == [f"p{i}" for i in read_json(full_run / "split.json")["indices"]]
    for line in lines:
        chosen = beta * (line["logps_chosen"] - line["ref_logps_chosen"])
        rejected = beta * (line["logps_rejected"] - line["ref_logps_rejected"])
        assert line["reward_chosen"] == pytest.approx(chosen, rel=1e-12, abs=1e-15)
        assert line["reward_rejected"] == pytest.approx(rejected, rel=1e-12, abs=1e-15)
        assert line["margin"] == pytest.approx(chosen - rejected, rel=1e-12, abs=1e-15)
        assert line["prediction"] == ("chosen" if line["margin"] > 0 else "rejected") and line["reference"] == "chosen"
        assert line["loss"] == pytest.approx(math.log1p(math.exp(-line["margin"])), rel=1e-9)
    count = len(lines)
    assert metrics["eval_loss"] == sum(line["loss"] for line in lines) / count
    assert metrics["eval_rewards_accuracy"] == sum(line["prediction"] == "chosen" for line in lines) / count
    assert metrics["eval_rewards_margin"] == sum(line["margin"] for line in lines) / count
    assert metrics["eval_rewards_chosen"] == sum(line["reward_chosen"] for line in lines) / count
    assert metrics["eval_rewards_rejected"] == sum(line["reward_rejected"] for line in lines) / count
    assert metrics["eval_logps_chosen"] == sum(line["logps_chosen"] for line in lines) / count
    assert metrics["eval_logps_rejected"] == sum(line["logps_rejected"] for line in lines) / count


def test_ftune_eval_rescoring_the_recorded_split_gives_the_runs_figures(full_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    recorded = read_json(copy / "eval_results.json")
    lines = read_jsonl(copy / "eval_predictions.jsonl")
    result = invoke("eval", copy)
    assert result.exit_code == 0, result
    assert read_json(copy / "eval_results.json") == recorded
    assert read_jsonl(copy / "eval_predictions.jsonl") == lines


def test_a_pair_scores_the_same_alone_as_with_its_split(full_run, data, tmp_path):
    rows = {r["id"]: r for r in read_jsonl(data["pairs"])}
    lines = sorted(read_jsonl(full_run / "eval_predictions.jsonl"),
                   key=lambda line: len(rows[line["id"]]["prompt"] + rows[line["id"]]["chosen"]))
    for held in (lines[0], lines[-1]):
        one = write_jsonl(tmp_path / f"{held['id']}.jsonl", [rows[held["id"]]])
        out = tmp_path / f"{held['id']}-eval"
        result = invoke("eval", full_run, "--data", one, "--output-dir", out)
        assert result.exit_code == 0, result
        (alone,) = read_jsonl(out / "eval_predictions.jsonl")
        assert alone["id"] == held["id"]
        for key in ("logps_chosen", "logps_rejected", "ref_logps_chosen", "ref_logps_rejected", "margin", "loss"):
            assert alone[key] == pytest.approx(held[key], rel=1e-5, abs=1e-5), key
        if abs(held["margin"]) > 1e-4:
            assert alone["prediction"] == held["prediction"]


@pytest.mark.numerics
def test_training_moves_the_policy_towards_the_chosen_answers(full_run):
    """Before training the policy is its reference (every margin 0); after it, the chosen answers gained."""
    metrics = read_json(full_run / "eval_results.json")
    assert metrics["eval_rewards_margin"] > 0 and metrics["eval_rewards_accuracy"] > 0.5
    assert metrics["eval_loss"] < math.log(2)


def test_ftune_generate_and_runs_take_a_dpo_run(full_run, lora_run, tmp_path):
    for run in (full_run, lora_run):
        result = invoke("generate", "--model", run, "--prompt", "repeat city:", "--max-new-tokens", "4")
        assert result.exit_code == 0, result
        assert result.stdout.strip()
    from ftune.serve import ServeOptions
    from ftune.serve.vllm import vllm_command

    command = vllm_command(ServeOptions(source=str(full_run), port=8123, engine="vllm"))
    assert command[:3] == ["vllm", "serve", str(full_run.resolve())]
    result = invoke("runs", full_run.parent)
    assert result.exit_code == 0, result
    assert "dpo" in result.stdout and "rewards_accuracy" in result.stdout


def test_pictures_show_the_margins_and_the_training_and_held_out_reward_accuracy(full_run):
    from ftune.pictures import histogram_figure, learning_curves_figure

    margins = [line["margin"] for line in read_jsonl(full_run / "eval_predictions.jsonl")]
    (axes,) = histogram_figure(margins, "reward margin", threshold=0.0).axes
    assert sum(bar.get_height() for bar in axes.patches) == len(margins)
    share = sum(m > 0 for m in margins) / len(margins)
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [f"{share:.1%} of the rows above 0"]
    history = read_json(full_run / "trainer_state.json")["log_history"]
    figure = learning_curves_figure(history, "rewards_accuracy", True, also=("rewards_margin",))
    for name in ("rewards_accuracy", "rewards_margin"):   # the main metric, and the task's curve_metrics
        (panel,) = [a for a in figure.axes if a.get_title() == f"Held-out {name}"]
        lines = {line.get_label(): list(line.get_ydata()) for line in panel.get_lines()}
        assert lines[f"training {name}"] == [e[name] for e in history if name in e]
        assert lines[f"held-out {name}"] == [e[f"eval_{name}"] for e in history if f"eval_{name}" in e]
    assert "held-out rewards_accuracy, held-out rewards_margin" in (full_run / "README.md").read_text()  # the caption


def test_a_dpo_run_merges_and_exports_as_gguf_like_an_lm_run(lora_run, tmp_path):
    """`ftune merge` makes the LoRA run standalone (its greedy text unchanged); `ftune export --format gguf` writes a
    verified file (on ftune's verification text: a dpo run's held-out rows are pairs, not token blocks); ftune serve
    takes it as a model that generates text."""
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from ftune.rundir import open_run

    assert open_run(lora_run).task.generates_text  # ftune serve's OpenAI-compatible endpoints
    merged = tmp_path / "merged"
    assert invoke("merge", lora_run, "--output-dir", merged).exit_code == 0
    texts = [invoke("generate", "--model", model, "--prompt", "repeat city:", "--max-new-tokens", "4").stdout
             for model in (lora_run, merged)]
    assert texts[0] == texts[1] and texts[0].strip()
    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    result = invoke("export", copy, "--format", "gguf")
    assert result.exit_code == 0, result
    record = read_json(copy / "exports" / "gguf" / "export.json")
    assert record["verification"]["held_out"] == "ftune's verification text (dpo runs do not score token blocks)"


# --------------------------------------------------------------------------------------------------
# The reference model


def test_lora_run_saves_one_adapter_and_rescores_alike(lora_run, tmp_path):
    """The reference is the adapter disabled: no copy of the adapter is saved, and a reload scores alike."""
    from safetensors.torch import load_file

    config = json.loads((lora_run / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not (lora_run / "ref").exists()
    weights = load_file(lora_run / "adapter_model.safetensors")
    assert not any(".ref." in name for name in weights)
    assert any("lora_B" in name and weights[name].abs().max() > 0 for name in weights)  # trained from B = 0
    copy = tmp_path / "copy"
    shutil.copytree(lora_run, copy)
    recorded = read_json(copy / "eval_results.json")
    assert invoke("eval", copy).exit_code == 0
    assert read_json(copy / "eval_results.json") == recorded


def sequence_logps(model, tokenizer, prompt: str, answer: str) -> float:
    """The summed log-probability of `answer` after `prompt` under `model`, computed here by hand."""
    import torch

    from ftune.tasks.dpo.data import encode_pair

    ids = encode_pair(tokenizer, prompt, answer, answer + "!")
    tokens = ids["prompt_ids"] + ids["chosen_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    start = len(ids["prompt_ids"])
    return float(sum(logps[i - 1, tokens[i]] for i in range(start, len(tokens))))


def test_a_lora_sft_run_is_the_reference_of_the_dpo_run_it_starts(tiny_gpt2, data, tmp_path):
    """`--model` a LoRA `ftune lm` run: the adapter is merged into its base in memory, so the reference log-probs
    of the DPO run are the SFT model's own (its base plus its adapter, unmerged, computed here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = tmp_path / "sft"
    result = invoke("lm", "--model", tiny_gpt2, "--data", data["sft"], "--output-dir", sft, "--lora", *FAST)
    assert result.exit_code == 0, result
    run = dpo(tmp_path / "dpo", "--model", sft, "--data", data["pairs"], "--lora", *FAST)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), str(sft)).eval()
    rows = {r["id"]: r for r in read_jsonl(data["pairs"])}
    lines = read_jsonl(run / "eval_predictions.jsonl")
    for line in lines[:3]:
        row = rows[line["id"]]
        assert line["ref_logps_chosen"] == pytest.approx(sequence_logps(model, tokenizer, row["prompt"],
                                                                        row["chosen"]), abs=1e-4)
        assert line["ref_logps_rejected"] == pytest.approx(sequence_logps(model, tokenizer, row["prompt"],
                                                                          row["rejected"]), abs=1e-4)
    assert f"**Preference-tuned (DPO) from** `{sft}`" in (run / "README.md").read_text()
    recorded = read_json(run / "eval_results.json")
    assert invoke("eval", run).exit_code == 0  # the run loads back: SFT base + SFT adapter merged + DPO adapter
    assert read_json(run / "eval_results.json") == recorded
    generated = invoke("generate", "--model", run, "--prompt", "repeat city:", "--max-new-tokens", "3")
    assert generated.exit_code == 0, generated
    from ftune.errors import UsageError
    from ftune.serve import ServeOptions
    from ftune.serve.vllm import vllm_command

    with pytest.raises(UsageError, match="ftune merge"):  # vLLM cannot stack the DPO adapter on the SFT adapter
        vllm_command(ServeOptions(source=str(run), port=8123, engine="vllm"))


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["full", "lora"])
def test_precomputed_reference_gives_the_figures_of_the_reference_at_every_step(method, full_run, lora_run,
                                                                                tiny_gpt2, data, tmp_path):
    lora = ("--lora",) if method == "lora" else ()
    run = dpo(tmp_path / "pre", "--model", tiny_gpt2, "--data", data["pairs"], "--precompute-ref", *lora, *FAST)
    every_step = lora_run if lora else full_run
    ours, theirs = read_json(run / "eval_results.json"), read_json(every_step / "eval_results.json")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    assert "precomputed" in (run / "README.md").read_text()
    if lora:
        assert not (run / "ref").exists()


# --------------------------------------------------------------------------------------------------
# Data layouts


def test_pair_layouts_normalise_to_prompt_and_answers():
    from ftune.tasks.dpo.data import normalise_pair

    hh = normalise_pair(None, "\n\nHuman: hi\n\nAssistant: There you go", "\n\nHuman: hi\n\nAssistant: Then no")
    assert hh == ("\n\nHuman: hi\n\nAssistant:", " There you go", " Then no")
    user, good, bad = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                       {"role": "assistant", "content": "b"})
    ultrafeedback = normalise_pair("q", [user, good], [user, bad])
    assert ultrafeedback == ([user], [good], [bad])
    assert normalise_pair("q", [good], [bad]) == ([user], [good], [bad])
    assert normalise_pair([user], [good], [bad]) == ([user], [good], [bad])
    assert normalise_pair("q", " a", " b") == ("q", " a", " b")
    with pytest.raises(ValueError):
        normalise_pair("q", [good], " b")


def test_chat_messages_ultrafeedback_and_hh_layouts_train(chat_gpt2, tiny_gpt2, data, tmp_path):
    chat = dpo(tmp_path / "chat", "--model", chat_gpt2, "--data", data["chat"], *FAST)
    state = __import__("yaml").safe_load((chat / "ftune.yaml").read_text())["run"]["state"]
    assert state["chat"] is True and state["columns"] == {"prompt": "prompt", "chosen": "chosen",
                                                          "rejected": "rejected"}
    ultrafeedback = dpo(tmp_path / "uf", "--model", chat_gpt2, "--data", data["ultrafeedback"], *FAST)
    state = __import__("yaml").safe_load((ultrafeedback / "ftune.yaml").read_text())["run"]["state"]
    assert state["chat"] is True and state["columns"]["prompt"] == "prompt"
    hh = dpo(tmp_path / "hh", "--model", tiny_gpt2, "--data", data["hh"], *FAST)
    state = __import__("yaml").safe_load((hh / "ftune.yaml").read_text())["run"]["state"]
    assert state["chat"] is False and state["columns"]["prompt"] is None
    for run in (chat, ultrafeedback, hh):
        assert len(read_jsonl(run / "eval_predictions.jsonl")) == read_json(run / "eval_results.json")["eval_samples"]


@pytest.mark.parametrize("case", ["same", "empty", "long-prompt", "mixed"])
def test_bad_pairs_are_one_line_naming_the_file_lines_and_nothing_is_written(case, tiny_gpt2, tmp_path):
    rows = [{k: v for k, v in row.items() if k != "id"} for row in repeat_pairs(30)]  # named by their lines
    for i in (3, 7):
        if case == "same":
            rows[i]["rejected"] = rows[i]["chosen"]
        elif case == "empty":
            rows[i]["chosen"] = "  "
        elif case == "long-prompt":
            rows[i]["prompt"] = "repeat " + " ".join(tiny_models.WORDS * 3) + ":"
        else:
            rows[i]["chosen"] = [{"role": "assistant", "content": "x"}]
    file = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    result = invoke("dpo", "--model", tiny_gpt2, "--data", file, "--output-dir", out, "--max-length", "32")
    assert result.exit_code == 2, result
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: ")
    assert "2 pair(s)" in message and "bad.jsonl lines 4, 8" in message, message
    expected = {"same": "the same chosen and rejected", "empty": "empty chosen or rejected",
                "long-prompt": "--max-length", "mixed": "not both text or both chat messages"}[case]
    assert expected in message, message
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (("--loss", "aot"), "couples the pairs of a batch"),
    (("--loss", "sft"), "couples the pairs of a batch"),
    (("--loss", "nonsense"), "is not one of"),
    (("--loss", "exo_pair"), "--label-smoothing above 0"),
])
def test_refused_options_are_one_line(args, expected, tiny_gpt2, data, tmp_path):
    out = tmp_path / "out"
    result = invoke("dpo", "--model", tiny_gpt2, "--data", data["pairs"], "--output-dir", out, *args)
    assert result.exit_code == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert not out.exists()


def test_without_trl_the_command_is_one_line_naming_the_extra(tiny_gpt2, data, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else find_spec(name, *a))
    result = invoke("dpo", "--model", tiny_gpt2, "--data", data["pairs"], "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result
    assert result.stderr.strip().splitlines() == ["error: ftune dpo trains with TRL, which is not installed; "
                                                  "pip install 'ftune[dpo]'"]


def test_trl_hooks_ftune_replaces_still_exist():
    """The private parts of TRL's DPOTrainer ftune overrides (ftune.tasks.dpo.trainer): an upgrade that renames
    them fails here, not silently in a run."""
    import inspect

    from trl import DPOTrainer

    assert list(inspect.signature(DPOTrainer._prepare_dataset).parameters) == [
        "self", "dataset", "processing_class", "args", "dataset_name"]
    assert callable(getattr(DPOTrainer, "_send_telemetry"))
    assert list(inspect.signature(DPOTrainer._precompute_ref_logps).parameters) == [
        "self", "dataset", "name", "batch_size"]
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ["self", "model", "inputs"]
    assert "_metrics" in inspect.getsource(DPOTrainer.log)


# --------------------------------------------------------------------------------------------------
# Resume and sweep


def test_resume_after_an_interruption_gives_the_uninterrupted_run(tiny_gpt2, data, tmp_path, monkeypatch):
    """SIGINT while step 3 trains (the real signal, sent from inside the step, as tests/helpers/signal_during_run.py
    does): exit 130 with a checkpoint; --resume ends with the weights and figures of an uninterrupted run."""
    import os
    import signal

    import ftune.trainers

    args = ["dpo", "--model", tiny_gpt2, "--data", data["pairs"], "--max-steps", "6", "--eval-steps", "2",
            "--checkpoint-minutes", "0", "--batch-size", "8", "--lr", "2e-3", "--max-length", "64",
            "--logging-steps", "1", "--precision", "fp32"]
    reference = tmp_path / "uninterrupted"
    assert invoke(*args, "--output-dir", reference).exit_code == 0
    original = ftune.trainers.FtuneTrainer.training_step

    def training_step(self, *a, **kw):
        if self.state.global_step + 1 == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *a, **kw)

    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(ftune.trainers.FtuneTrainer, "training_step", training_step)
        stopped = invoke(*args, "--output-dir", run)
    assert stopped.exit_code == 130, stopped
    assert not (run / "train_results.json").exists() and (run / "checkpoint-3").is_dir()
    resumed = invoke(*args, "--output-dir", run, "--resume")
    assert resumed.exit_code == 0, resumed
    assert "resuming from checkpoint-3" in resumed.stdout
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert read_json(run / "eval_results.json") == read_json(reference / "eval_results.json")


@pytest.mark.slow
def test_sweep_dpo_runs_trials_with_beta(tiny_gpt2, data, tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep", "dpo", "--model", tiny_gpt2, "--data", data["pairs"], "--output-dir", out, *FAST,
                    "--param", "beta=0.05..0.5:log", "--trials", "2", "--seed", "42")
    assert result.exit_code == 0, result
    rows = read_jsonl(out / "trials.jsonl")
    assert [r["state"] for r in rows] == ["complete", "complete"]
    for row in rows:
        assert 0.05 <= row["params"]["beta"] <= 0.5
        assert row["value"] == read_json(out / row["run"] / "eval_results.json")["eval_rewards_accuracy"]
