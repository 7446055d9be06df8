"""`ftune translate`: fine-tune a seq2seq model (T5, mBART, Marian, NLLB, M2M100 ...) to translate.

A thin layer on the seq2seq base (ftune.tasks.seq2seq). What it adds:
- data: the Hub layout (a `translation` column of {language code: text} dicts, the pair picked by
  --source-lang/--target-lang), two text columns (--source-column/--target-column, or columns named by the
  language codes, or source/target), or a .tsv file of pairs (ftune.tasks.translate.data);
- languages: T5-family models read "translate English to French: " before each source (names from the
  codes); models whose tokenizer has language codes (mBART, mBART-50, NLLB, M2M100) get the tokenizer's
  src_lang/tgt_lang and the target code as the first generated token (forced_bos_token_id; mBART-cc25 style
  models start the decoder with it instead); multilingual Marian models get the target token (>>fr<<) before
  each source (ftune.tasks.translate.languages). A code the model or the data does not know is a UsageError;
- scores: sacreBLEU corpus BLEU and chrF with sacreBLEU's defaults (0-100) from ftune's `translation` metric
  module, on the generated texts against the raw references; the best checkpoint by BLEU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ftune import console
from ftune.config import option
from ftune.data import column_list
from ftune.errors import UsageError
from ftune.tasks.base import Scores
from ftune.tasks.seq2seq import (
    T5_FAMILY,
    Seq2SeqOptions,
    Seq2SeqState,
    Seq2SeqTask,
    as_text,
    examples_table,
    generation_usage,
    mean_generated_length,
)
from ftune.tasks.state import saved_when_set
from ftune.tasks.translate.data import TRANSLATION_COLUMN, check_translation_dicts, load_tsv_pairs
from ftune.tasks.translate.languages import code_named, language_name, language_setup, set_tokenizer_languages

PAIR_COLUMNS = (("source", "target"), ("src", "tgt"))


@dataclass
class TranslateOptions(Seq2SeqOptions):
    source_lang: Optional[str] = option(None, "Source language code: a key of the data's translation dicts, the "
                                              "T5 prefix's language, the model's code (en; mBART en_XX; NLLB "
                                              "eng_Latn).", panel="Data")
    target_lang: Optional[str] = option(None, "Target language code (as --source-lang).", panel="Data")
    source_column: Optional[str] = option(None, "Column with the source text (detected: a translation column of "
                                                "{code: text} dicts, columns named by the language codes, "
                                                "source/src).", panel="Data")
    target_column: Optional[str] = option(None, "Column with the target text (detected: as --source-column; "
                                                "target/tgt).", panel="Data")
    source_prefix: str = option("auto", "Text put before each source; 'auto' is 'translate English to French: ' "
                                        "for T5-family models, the target token (>>fr<<) for multilingual Marian "
                                        "models, nothing otherwise; '' for none.", panel="Data")
    max_target_length: int = option(128, "Longest translation in tokens: labels are truncated to it and "
                                          "evaluation generates at most this many new tokens.", panel="Data", min=1)
    num_beams: int = option(1, "Beams when generating translations for evaluation (1: greedy).", min=1)

    def check(self, config):
        problems = super().check(config)
        if bool(self.source_lang) != bool(self.target_lang):
            given, missing = (("--source-lang", "--target-lang") if self.source_lang
                              else ("--target-lang", "--source-lang"))
            problems.append(f"{given} needs {missing} too (a translation goes from one language to another)")
        elif self.source_lang and self.source_lang == self.target_lang:
            problems.append(f"--source-lang and --target-lang are both '{self.source_lang}'; give two languages")
        return problems


@dataclass(frozen=True, kw_only=True)
class TranslateState(Seq2SeqState):
    """The seq2seq state and the languages: where the texts are, their codes, what a model with codes needs."""

    layout: str                         # "translation" (a column of {code: text} dicts) or "columns"
    source_lang: Optional[str]          # the languages' codes (None: not given, no column named by one)
    target_lang: Optional[str]
    tokenizer_languages: Optional[dict[str, str]] = saved_when_set()  # src_lang/tgt_lang of a tokenizer with codes
    generation: Optional[dict[str, int]] = saved_when_set()           # generation settings for the target language


class TranslateTask(Seq2SeqTask):
    name = "translate"
    summary = "Fine-tune a seq2seq model for translation (BLEU and chrF)."
    options_class = TranslateOptions
    state_class = TranslateState
    main_metric = "bleu"
    metric_module = "translation"
    reported_metrics = ("bleu", "chrf", "gen_len")
    source_role = "source text"
    target_role = "target text"
    output_name = "translation_text"   # as the transformers translation pipeline names its output

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config, data, data_config):
        opts = config.task_options
        header_names = {opts.source_column, opts.target_column, opts.source_lang, opts.target_lang} - {None}
        pairs = load_tsv_pairs(data, header_names)
        return pairs if pairs is not None else super().load_source(config, data, data_config)

    def resolve_columns(self, config, columns):
        opts = config.task_options
        if opts.source_column or opts.target_column:
            return super().resolve_columns(config, columns)
        if TRANSLATION_COLUMN in columns:
            if not opts.source_lang:
                raise UsageError(f"the data has a '{TRANSLATION_COLUMN}' column of {{language: text}} pairs; pass "
                                 "--source-lang and --target-lang to pick the direction")
            return {"source": TRANSLATION_COLUMN, "target": TRANSLATION_COLUMN}
        if opts.source_lang and opts.source_lang in columns and opts.target_lang in columns:
            return {"source": opts.source_lang, "target": opts.target_lang}
        lower = {c.lower(): c for c in columns}
        for source, target in PAIR_COLUMNS:
            if source in lower and target in lower:
                return {"source": lower[source], "target": lower[target]}
        raise UsageError(f"cannot tell which columns hold the source and target texts; pass --source-lang and "
                         f"--target-lang (with a '{TRANSLATION_COLUMN}' column or columns named by the codes) or "
                         f"--source-column and --target-column (the columns are: {', '.join(columns)})")

    def prepare_state(self, config, split, columns):
        """The seq2seq base's state plus the languages: checked against the data and the model's tokenizer
        first, so an unknown code is the one thing said."""
        opts = config.task_options
        dicts = columns["source"] == columns["target"]
        source_lang = opts.source_lang or code_named(columns["source"])
        target_lang = opts.target_lang or code_named(columns["target"])
        if dicts:
            check_translation_dicts(split.train, source_lang, target_lang, "the training split", split.train_names)
            check_translation_dicts(split.eval, source_lang, target_lang, "the held-out split", split.eval_names)
        setup = language_setup(self.load_tokenizer(config), source_lang, target_lang)
        seq2seq = dataclasses.asdict(super().prepare_state(config, split, columns))
        target_token = setup.pop("target_token", None)
        if target_token and opts.source_prefix == "auto":
            seq2seq["source_prefix"] = target_token + " "
        return TranslateState(**seq2seq, layout=TRANSLATION_COLUMN if dicts else "columns", source_lang=source_lang,
                              target_lang=target_lang, **setup)

    def auto_prefix(self, config, model_type):
        if model_type not in T5_FAMILY:
            return ""
        opts = config.task_options
        languages = [opts.source_lang, opts.target_lang]
        if not all(languages):
            given = [code_named(c) for c in (opts.source_column, opts.target_column)]
            languages = given if all(given) else languages
        if not all(languages):
            console.note("no --source-lang/--target-lang: T5 gets no 'translate ... to ...:' prefix; pass them (or "
                         "--source-prefix) to use the prefix it was pretrained with")
            return ""
        source, target = (language_name(code, flag) for code, flag in zip(languages, ("--source-lang",
                                                                                      "--target-lang")))
        return f"translate {source} to {target}: "

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        if state.layout == TRANSLATION_COLUMN:
            check_translation_dicts(rows, state.source_lang, state.target_lang, where)

    # ---- features and generation ------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        """The seq2seq base's features of each row's source text and (except for prediction) target text, read
        from whichever layout the rows have."""
        import datasets

        set_tokenizer_languages(tokenizer, state.tokenizer_languages)
        pairs = {"source": self.source_texts(state, rows)}
        if purpose != "predict" and state.columns["target"] in rows.column_names:
            pairs["target"] = self.references(config, state, rows)
        flat = dataclasses.replace(state, columns={"source": "source", "target": "target"})
        return super().features(config, tokenizer, datasets.Dataset.from_dict(pairs), flat, purpose=purpose)

    def load_model(self, config, tokenizer, state):
        model = super().load_model(config, tokenizer, state)
        # Saved with the run, so the model alone (a pipeline, `ftune generate`) starts in the target language.
        for key, value in (state.generation or {}).items():
            setattr(model.generation_config, key, value)
        return model

    def generation_kwargs(self, config, state):
        return {**super().generation_kwargs(config, state), **(state.generation or {})}

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        outputs = super().decode(config, tokenizer, state, rows, features, predictions)
        return [{**out, "source": source} for out, source in zip(outputs, self.source_texts(state, rows))]

    def references(self, config, state, rows):
        if state.layout == TRANSLATION_COLUMN:
            return [as_text(pair[state.target_lang]) for pair in column_list(rows, TRANSLATION_COLUMN)]
        return super().references(config, state, rows)

    def metrics(self, config, state, outputs, references, features):
        from ftune.metrics import load_metric

        scores = load_metric(self.metric_module).compute(predictions=[o["prediction"] for o in outputs],
                                                    references=references)
        figures = {"bleu": scores["bleu"], "chrf": scores["chrf"], "gen_len": mean_generated_length(outputs)}
        return Scores(metrics=figures, details={k: v for k, v in scores.items() if k not in ("bleu", "chrf")},
                      table=examples_table(outputs, references))

    # ---- inference --------------------------------------------------------------------------------
    def source_texts(self, state, rows) -> list[str]:
        """The source text of each row: its source column, or its translation dict's source language, or
        (inputs to `ftune predict`) a column named by the source language."""
        key = self.source_key(state, rows.column_names)
        if key == TRANSLATION_COLUMN and state.layout == TRANSLATION_COLUMN:
            return [as_text(pair[state.source_lang]) for pair in column_list(rows, key)]
        return [as_text(value) for value in column_list(rows, key)]

    def source_key(self, state, keys: list[str]) -> str:
        """The input column holding the source text; UsageError naming the columns there are."""
        candidates = [state.columns["source"], state.source_lang]
        found = next((c for c in candidates if c and c in keys), None)
        if found is None:
            wanted = " or ".join(repr(c) for c in dict.fromkeys(candidates) if c)
            raise UsageError(f"the input has no column {wanted} (the {self.source_role}s this run reads); the input "
                             f"has: {', '.join(keys)}")
        return found

    def inputs_from_options(self, config, state, options):
        texts = options.get("texts") or []
        if not texts:
            raise UsageError(f"nothing to do: pass --text (a {self.source_role}, repeatable) or --input FILE")
        key = state.source_lang if state.layout == TRANSLATION_COLUMN else state.columns["source"]
        return [{key: t} for t in texts]

    def check_inputs(self, config, state, inputs, names):
        key = self.source_key(state, list(inputs[0]))
        for row, name in zip(inputs, names):
            value = row.get(key)
            if isinstance(value, dict) and key == TRANSLATION_COLUMN:
                value = value.get(state.source_lang)
            if value is None or not as_text(value).strip():
                raise UsageError(f"{name} has no {self.source_role} in column '{key}'; give every row one")

    def model_card_usage(self, config, state, run_path):
        return generation_usage(self, config, state, run_path, state.tokenizer_languages, state.generation)


TASK = TranslateTask()
