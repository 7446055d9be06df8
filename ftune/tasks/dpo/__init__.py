"""`ftune dpo`: preference tuning (DPO) of a causal LM on chosen/rejected pairs, on TRL's DPOTrainer.

The pairs (ftune.tasks.dpo.data) are strings or chat messages, with a prompt column, or whole conversations that
share their beginning (the Anthropic HH layout; UltraFeedback-binarized's conversations too). Every pair is checked
before anything is written: an empty side, the same answer on both sides, a prompt that leaves no room for the
answers under --max-length — one line naming the rows.

The model DPO starts from is the reference: a frozen copy (full fine-tuning), its log-probabilities precomputed once
(--precompute-ref), or, with --lora, the model with the new adapter disabled. A finished `ftune lm` run may be the
starting model; a LoRA one is merged into its base in memory first, so the reference is the SFT model.

Scoring (ftune.tasks.dpo.trainer) gives one row of figures per held-out pair: the policy's and the reference's
log-probabilities of both answers and the pair's loss. eval_predictions.jsonl holds them per pair, with `prediction`
the side the policy's implicit reward prefers and `reference` "chosen"; every eval_ figure is the mean of those lines
(eval_rewards_accuracy: the share of pairs predicted "chosen").
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Optional

from ftune.config import TaskOptions, option
from ftune.data import column_list, describe_row_groups, pick_column, tokenize_rows
from ftune.errors import UsageError
from ftune.tasks.base import Scores, Task
from ftune.tasks.state import TaskState

# TRL's DPOConfig.loss_type values whose loss for a pair depends on that pair alone, so a pair's figures are the same
# scored alone or with its split (its line of eval_predictions.jsonl re-computes the totals).
PAIRWISE_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "apo_zero",
                   "apo_down", "discopop", "sigmoid_norm")
# ... and those that couple the pairs of a batch: aot and aot_unpaired sort the log-ratios across the batch, sft is
# the mean over all the batch's chosen tokens.
BATCH_LOSSES = ("aot", "aot_unpaired", "sft")

PROMPT_COLUMNS = ("prompt", "question", "instruction")
CHOSEN_COLUMNS = ("chosen",)
REJECTED_COLUMNS = ("rejected",)
INSTALL = "pip install 'ftune[dpo]'"
# What makes a pair untrainable (ftune.tasks.dpo.data.pair_problem), as messages say it.
PAIR_PROBLEMS = {"empty": "have an empty chosen or rejected answer",
                 "same": "have the same chosen and rejected answer, which teaches nothing"}


@dataclass
class DPOOptions(TaskOptions):
    beta: float = option(0.1, "How far the model may move from the reference: a higher beta keeps it closer (for "
                              "--loss ipo, the regularisation tau).", panel="DPO", min=0.0, exclusive_min=True)
    loss: str = option("sigmoid", "TRL's DPO loss type: sigmoid (DPO), hinge, ipo, robust, bco_pair, nca_pair, "
                                  "exo_pair, sppo_hard, apo_zero, apo_down, discopop, sigmoid_norm.", panel="DPO")
    label_smoothing: float = option(0.0, "Share of pairs assumed flipped (--loss robust, below 0.5; exo_pair needs "
                                         "it above 0).", panel="DPO", min=0.0, max=1.0, exclusive_max=True)
    precompute_ref: bool = option(False, "Score the pairs with the reference model once, before training, instead "
                                         "of at every step (and, fine-tuning all weights, instead of keeping a "
                                         "copy of the model in memory).", panel="DPO")
    prompt_column: Optional[str] = option(None, "Column with the prompts (detected: prompt; leave out when chosen "
                                                "and rejected are whole conversations sharing the prompt).",
                                          panel="Data")
    chosen_column: Optional[str] = option(None, "Column with the preferred answers (detected: chosen).",
                                          panel="Data")
    rejected_column: Optional[str] = option(None, "Column with the dispreferred answers (detected: rejected).",
                                            panel="Data")
    gguf_file: Optional[str] = option(None, "GGUF file inside the --model folder.", panel="Model")

    defaults = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_length": 1024, "batch_size": 8}

    def check(self, config):
        if importlib.util.find_spec("trl") is None:
            raise UsageError(f"ftune dpo trains with TRL, which is not installed; {INSTALL}")
        problems = []
        if self.loss in BATCH_LOSSES:
            problems.append(f"--loss {self.loss} couples the pairs of a batch, so no pair has figures of its own; "
                            f"ftune refuses {', '.join(BATCH_LOSSES)}: use one of {', '.join(PAIRWISE_LOSSES)}")
        elif self.loss not in PAIRWISE_LOSSES:
            problems.append(f"--loss {self.loss!r} is not one of {', '.join(PAIRWISE_LOSSES)}")
        if self.loss == "exo_pair" and self.label_smoothing == 0:
            problems.append("--loss exo_pair needs --label-smoothing above 0 (its paper suggests 1e-3)")
        if self.loss == "robust" and self.label_smoothing >= 0.5:
            problems.append("--loss robust needs --label-smoothing below 0.5")
        return problems


@dataclass(frozen=True, kw_only=True)
class DPOState(TaskState):
    """What a dpo run derives: its columns (prompt, chosen, rejected), whether its pairs are chats, its lengths."""

    chat: bool                          # chosen/rejected are chat messages (rendered by the chat template)
    context: int                        # the model's context in tokens
    max_length: int                     # prompt + answer tokens scored, at most (--max-length capped at the context)


class DPOTask(Task):
    name = "dpo"
    summary = "Preference-tune a causal language model (DPO, on TRL) on chosen/rejected answer pairs."
    options_class = DPOOptions
    state_class = DPOState
    model_class = "AutoModelForCausalLM"
    peft_model_class = "AutoPeftModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "rewards_accuracy"
    curve_metrics = ("rewards_margin",)
    greater_is_better = True
    reported_metrics = ("loss", "rewards_accuracy", "rewards_margin", "rewards_chosen", "rewards_rejected",
                        "logps_chosen", "logps_rejected")
    generates_text = True

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        opts = config.task_options
        chosen = pick_column(columns, opts.chosen_column, CHOSEN_COLUMNS, what="chosen answers",
                             option="--chosen-column")
        rejected = pick_column(columns, opts.rejected_column, REJECTED_COLUMNS, what="rejected answers",
                               option="--rejected-column")
        prompt = pick_column([c for c in columns if c not in (chosen, rejected)], opts.prompt_column,
                             PROMPT_COLUMNS, what="prompts", option="--prompt-column", required=False)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def prepare_state(self, config, split, columns):
        from ftune.models import require_causal_lm

        source = self.model_source(config)
        require_causal_lm(source.load_config(), config.model)
        context = source.context_length()
        max_length = min(config.max_length, context)
        tokenizer = self.load_tokenizer(config)
        parts = [(self._pairs(columns, rows), names, where)
                 for rows, names, where in ((split.train, split.train_names, "the training split"),
                                            (split.eval, split.eval_names, "the held-out split"))]
        raise_pair_problems([(problems, names, where) for (_, problems), names, where in parts])
        check_prompt_lengths(tokenizer, [(pairs, names, where) for (pairs, _), names, where in parts], max_length)
        chats = {isinstance(chosen, list) for (pairs, _), _, _ in parts for _, chosen, _ in pairs}
        if len(chats) > 1:
            raise UsageError("the pairs mix plain-text answers and chat messages; give them all in one form")
        chat = chats == {True}
        if chat and not getattr(tokenizer, "chat_template", None):
            raise UsageError("the pairs are chat messages but the tokenizer has no chat template; use a chat model "
                             "(or its tokenizer) or give the pairs as plain text")
        return DPOState(columns=columns, chat=chat, context=context, max_length=max_length)

    def _pairs(self, columns, rows) -> tuple[list[tuple[Any, Any, Any]], dict[str, list[int]]]:
        """The rows as normalised (prompt, chosen, rejected) pairs, and the positions of the rows that cannot train,
        by what is wrong with them."""
        from ftune.tasks.dpo.data import normalise_pair, pair_problem

        prompts = column_list(rows, columns["prompt"]) if columns.get("prompt") else [None] * len(rows)
        pairs, problems = [], {}
        for i, (prompt, chosen, rejected) in enumerate(zip(prompts, column_list(rows, columns["chosen"]),
                                                           column_list(rows, columns["rejected"]))):
            try:
                pair = normalise_pair(prompt, chosen, rejected)
            except ValueError as exc:
                problems.setdefault(f"are not preference pairs: {exc}", []).append(i)
                pairs.append((prompt, chosen, rejected))
                continue
            problem = pair_problem(*pair)
            if problem:
                problems.setdefault(PAIR_PROBLEMS[problem], []).append(i)
            pairs.append(pair)
        return pairs, problems

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        pairs, problems = self._pairs(state.columns, rows)
        raise_pair_problems([(problems, None, where)])
        if any(isinstance(chosen, list) != state.chat for _, chosen, _ in pairs):
            raise UsageError(f"{where} holds {'plain-text' if state.chat else 'chat'} pairs, but this run was "
                             f"trained on {'chat' if state.chat else 'plain-text'} pairs; give pairs of its form")

    # ---- model ------------------------------------------------------------------------------------
    def check_input_length(self, config, tokenizer):
        """--max-length is capped at the model's context in prepare_state."""

    def model_source(self, config):
        from ftune.models import ModelSource

        # A finished LoRA run (the usual SFT run) starts a DPO run merged into its base: the reference is the SFT model.
        return ModelSource.parse(config.model, config.task_options.gguf_file, merges_adapter=True)

    # ---- features and training --------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        import datasets

        from ftune.tasks.dpo.data import encode_pair

        pairs, problems = self._pairs(state.columns, rows)
        raise_pair_problems([(problems, None, "the data")])
        check_prompt_lengths(tokenizer, [(pairs, None, "the data")], state.max_length)
        prompt, chosen, rejected = (list(side) for side in zip(*pairs)) if pairs else ([], [], [])
        pair_rows = datasets.Dataset.from_dict({"prompt": [_cell(p) for p in prompt],
                                                "chosen": [_cell(c) for c in chosen],
                                                "rejected": [_cell(r) for r in rejected]})

        def encode(batch):
            ids = [encode_pair(tokenizer, _uncell(p), _uncell(c), _uncell(r))
                   for p, c, r in zip(batch["prompt"], batch["chosen"], batch["rejected"])]
            return {"prompt_ids": [i["prompt_ids"] for i in ids], "chosen_ids": [i["chosen_ids"] for i in ids],
                    "rejected_ids": [i["rejected_ids"] for i in ids],
                    "length": [len(i["prompt_ids"]) + max(len(i["chosen_ids"]), len(i["rejected_ids"]))
                               for i in ids]}

        return tokenize_rows(pair_rows, encode, config, desc="tokenizing")

    def scoring_inputs(self, features):
        """The pairs longest first (both answers after the prompt), and the order that restores them."""
        lengths = column_list(features, "length")
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return features.select(order), order

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        # TRL's: chosen rows, then rejected rows, each prompt + answer cut at --max-length (the answer's end), and at
        # the model's context where that is shorter (as prepare_state caps the prompts' check).
        from ftune.models import context_of

        return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id,
                                         max_length=min(config.max_length,
                                                        context_of(model.config, default=config.max_length)),
                                         pad_to_multiple_of=pad_to_multiple_of)

    def trainer_class(self):
        from ftune.tasks.dpo.trainer import PreferenceTrainer

        return PreferenceTrainer

    def trainer_kwargs(self, config, state):
        from ftune.tasks.dpo.trainer import Preference

        opts = config.task_options
        preference = Preference(beta=opts.beta, loss=opts.loss, label_smoothing=opts.label_smoothing,
                                precompute_ref=opts.precompute_ref)
        return {"preference": preference, "reference": lambda: self.load_model(config, None, state)}

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        """Each pair's figures: log-probabilities (policy and reference, both answers), rewards, margin, loss."""
        beta = config.task_options.beta
        outputs = []
        for chosen, rejected, ref_chosen, ref_rejected, _, _, loss in predictions.tolist():
            reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
            margin = reward_chosen - reward_rejected
            outputs.append({"prediction": "chosen" if margin > 0 else "rejected", "margin": margin,
                            "reward_chosen": reward_chosen, "reward_rejected": reward_rejected,
                            "logps_chosen": chosen, "logps_rejected": rejected, "ref_logps_chosen": ref_chosen,
                            "ref_logps_rejected": ref_rejected, "loss": loss})
        return outputs

    def references(self, config, state, rows):
        return ["chosen"] * len(rows)

    def metrics(self, config, state, outputs, references, features):
        return Scores(metrics=pair_totals(outputs))

    def pictures(self, config, state, evaluation):
        from ftune.pictures import histogram_picture

        return [histogram_picture("reward_margins.png", "Reward margin of each held-out pair (chosen minus rejected "
                                  "reward; above 0: the policy prefers the chosen answer)",
                                  [p["margin"] for p in evaluation.predictions], "reward margin", threshold=0.0)]

    def model_card_facts(self, config, state):
        opts = config.task_options
        reference = ("the starting model with the adapter disabled" if config.lora else
                     "a frozen copy of the starting model")
        if opts.precompute_ref:
            reference += ", its log-probabilities precomputed before training"
        return [f"**Preference-tuned (DPO) from** `{config.model}`: loss `{opts.loss}`, beta {opts.beta:g}; "
                f"reference: {reference}"]

    def model_card_usage(self, config, state, run_path):
        command = f"\n\n# or from the command line:\n# ftune generate --model {run_path} --prompt \"...\""
        if config.lora and self.model_source(config).adapter_base() is not None:
            # The adapter was trained on the LoRA run it started from, merged into its base: peft alone cannot
            # rebuild that model, so the card shows the standalone model `ftune merge` makes.
            return (f"# ftune merge {run_path} --output-dir MERGED   (the adapter applies to {config.model} merged "
                    "into its base)\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                    "model = AutoModelForCausalLM.from_pretrained(\"MERGED\")\n"
                    "tokenizer = AutoTokenizer.from_pretrained(\"MERGED\")" + command)
        return super().model_card_usage(config, state, run_path) + command


def pair_totals(outputs: list[dict[str, Any]]) -> dict[str, float]:
    """The eval_ figures (without the prefix): each the mean of the pairs' lines."""
    count = max(len(outputs), 1)

    def mean(key):
        return sum(o[key] for o in outputs) / count

    return {"loss": mean("loss"),
            "rewards_accuracy": sum(o["prediction"] == "chosen" for o in outputs) / count,
            "rewards_margin": mean("margin"), "rewards_chosen": mean("reward_chosen"),
            "rewards_rejected": mean("reward_rejected"), "logps_chosen": mean("logps_chosen"),
            "logps_rejected": mean("logps_rejected")}


def raise_pair_problems(parts: list[tuple[dict[str, list[int]], Any, str]]) -> None:
    """One UsageError naming every problem the parts have and its rows, across the parts (each part: the problems
    `_pairs` found, how its rows are named, where they are)."""
    kinds = dict.fromkeys(kind for problems, _, _ in parts for kind in problems)
    found = []
    for kind in kinds:
        groups = [(problems.get(kind, []), names, where) for problems, names, where in parts]
        count = sum(len(positions) for positions, _, _ in groups)
        found.append(f"{count} pair(s) {kind} ({describe_row_groups(groups)})")
    if found:
        raise UsageError(f"{'; '.join(found)}; fix or remove them")


def check_prompt_lengths(tokenizer, parts: list[tuple[list, Any, str]], max_length: int) -> None:
    """UsageError when prompts leave no room for the answers under --max-length, naming the rows (each part: its
    normalised pairs, how its rows are named, where they are)."""
    from ftune.tasks.dpo.data import prompt_length

    groups, longest = [], 0
    for pairs, names, where in parts:
        lengths = [prompt_length(tokenizer, prompt) for prompt, _, _ in pairs]
        groups.append(([i for i, n in enumerate(lengths) if n >= max_length], names, where))
        longest = max([longest, *lengths])
    count = sum(len(positions) for positions, _, _ in groups)
    if count:
        raise UsageError(f"{count} pair(s) have prompts of {max_length} tokens or more, which leaves no room for "
                         f"the answers under --max-length {max_length} ({describe_row_groups(groups)}; the longest "
                         f"prompt is {longest} tokens); raise --max-length or shorten the prompts")


def _cell(value: Any) -> str:
    """A pair's side as one Arrow cell: text, or chat messages as JSON (a column then holds one type)."""
    import json

    return json.dumps(value)


def _uncell(value: str) -> Any:
    import json

    return json.loads(value)


TASK = DPOTask()
