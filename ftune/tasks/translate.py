"""`ftune translate`: fine-tune a seq2seq model (T5, mBART, Marian, NLLB, M2M100 ...) to translate.

A thin layer on the seq2seq base (ftune.tasks.seq2seq). What it adds:
- data: the Hub layout (a `translation` column of {language code: text} dicts, the pair picked by
  --source-lang/--target-lang), two text columns (--source-column/--target-column, or columns named by the
  language codes, or source/target), or a .tsv file of pairs (read here: see `load_tsv_pairs`);
- languages: T5-family models read "translate English to French: " before each source (names from the
  codes); models whose tokenizer has language codes (mBART, mBART-50, NLLB, M2M100) get the tokenizer's
  src_lang/tgt_lang and the target code as the first generated token (forced_bos_token_id; mBART-cc25 style
  models start the decoder with it instead); multilingual Marian models get the target token (>>fr<<) before
  each source. A code the model or the data does not know is a UsageError;
- scores: sacreBLEU corpus BLEU and chrF with sacreBLEU's defaults (0-100) from ftune's `translation` metric
  module, on the generated texts against the raw references; the best checkpoint by BLEU.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.config import option
from ftune.data import column_list, files_by_split
from ftune.errors import UsageError
from ftune.tasks.base import Scores
from ftune.tasks.seq2seq import T5_FAMILY, Seq2SeqOptions, Seq2SeqTask, as_text, examples_table, mean_generated_length

TRANSLATION_COLUMN = "translation"
PAIR_COLUMNS = (("source", "target"), ("src", "tgt"))
# English names of ISO 639-1 codes, for the T5 prefix ("translate English to German: ").
LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "cy": "Welsh",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician",
    "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "nb": "Norwegian", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "zh": "Chinese",
}


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


class TranslateTask(Seq2SeqTask):
    name = "translate"
    summary = "Fine-tune a seq2seq model for translation (BLEU and chrF)."
    options_class = TranslateOptions
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
        source_lang = opts.source_lang or _code_named(columns["source"])
        target_lang = opts.target_lang or _code_named(columns["target"])
        if dicts:
            check_translation_dicts(split.train, source_lang, target_lang, "the training split", split.train_names)
            check_translation_dicts(split.eval, source_lang, target_lang, "the held-out split", split.eval_names)
        setup = language_setup(self.load_tokenizer(config), source_lang, target_lang)
        state = super().prepare_state(config, split, columns)
        target_token = setup.pop("target_token", None)
        if target_token and opts.source_prefix == "auto":
            state["source_prefix"] = target_token + " "
        return {**state, "layout": TRANSLATION_COLUMN if dicts else "columns", "source_lang": source_lang,
                "target_lang": target_lang, **setup}

    def auto_prefix(self, config, model_type):
        if model_type not in T5_FAMILY:
            return ""
        opts = config.task_options
        languages = [opts.source_lang, opts.target_lang]
        if not all(languages):
            given = [_code_named(c) for c in (opts.source_column, opts.target_column)]
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
        if state.get("layout") == TRANSLATION_COLUMN:
            check_translation_dicts(rows, state["source_lang"], state["target_lang"], where)

    # ---- features and generation ------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        """The seq2seq base's features of each row's source text and (except for prediction) target text, read
        from whichever layout the rows have."""
        import datasets

        set_tokenizer_languages(tokenizer, state)
        pairs = {"source": self.source_texts(state, rows)}
        if purpose != "predict" and state["columns"]["target"] in rows.column_names:
            pairs["target"] = self.references(config, state, rows)
        flat = {**state, "columns": {"source": "source", "target": "target"}}
        return super().features(config, tokenizer, datasets.Dataset.from_dict(pairs), flat, purpose=purpose)

    def load_model(self, config, tokenizer, state):
        model = super().load_model(config, tokenizer, state)
        # Saved with the run, so the model alone (a pipeline, `ftune generate`) starts in the target language.
        for key, value in state.get("generation", {}).items():
            setattr(model.generation_config, key, value)
        return model

    def generation_kwargs(self, config, state):
        return {**super().generation_kwargs(config, state), **state.get("generation", {})}

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        outputs = super().decode(config, tokenizer, state, rows, features, predictions)
        return [{**out, "source": source} for out, source in zip(outputs, self.source_texts(state, rows))]

    def references(self, config, state, rows):
        if state.get("layout") == TRANSLATION_COLUMN:
            return [as_text(pair[state["target_lang"]]) for pair in column_list(rows, TRANSLATION_COLUMN)]
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
        if key == TRANSLATION_COLUMN and state.get("layout") == TRANSLATION_COLUMN:
            return [as_text(pair[state["source_lang"]]) for pair in column_list(rows, key)]
        return [as_text(value) for value in column_list(rows, key)]

    def source_key(self, state, keys: list[str]) -> str:
        """The input column holding the source text; UsageError naming the columns there are."""
        candidates = [state["columns"]["source"], state.get("source_lang")]
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
        key = state["source_lang"] if state.get("layout") == TRANSLATION_COLUMN else state["columns"]["source"]
        return [{key: t} for t in texts]

    def check_inputs(self, config, state, inputs, names):
        key = self.source_key(state, list(inputs[0]))
        for row, name in zip(inputs, names):
            value = row.get(key)
            if isinstance(value, dict) and key == TRANSLATION_COLUMN:
                value = value.get(state["source_lang"])
            if value is None or not as_text(value).strip():
                raise UsageError(f"{name} has no {self.source_role} in column '{key}'; give every row one")

    def model_card_usage(self, config, state, run_path):
        cls = self.peft_model_class if config.lora else self.model_class
        module = "peft" if config.lora else "transformers"
        languages = state.get("tokenizer_languages") or {}
        tokenizer_args = "".join(f", {k}={v!r}" for k, v in languages.items())
        generation = "".join(f", {k}={v}" for k, v in state.get("generation", {}).items())
        return (f"from {module} import {cls}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {cls}.from_pretrained(\"{run_path}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\"{tokenizer_args})\n"
                f"inputs = tokenizer([{state.get('source_prefix', '')!r} + text], truncation=True, "
                f"return_tensors=\"pt\")\n"
                f"output = tokenizer.decode(model.generate(**inputs, max_new_tokens="
                f"{config.task_options.max_target_length}{generation})[0], skip_special_tokens=True)")


# --------------------------------------------------------------------------------------------------
# Languages


def language_name(code: str, flag: str) -> str:
    """The English name of a language code (en, en_XX, en-US ...) for the T5 prefix; UsageError when unknown."""
    base = code.replace("-", "_").split("_")[0].lower()
    if base not in LANGUAGE_NAMES:
        raise UsageError(f"unknown language code '{code}' ({flag}) for the T5 prefix; use an ISO 639-1 code such as "
                         "en, fr, de, ro, or give the prefix yourself with --source-prefix")
    return LANGUAGE_NAMES[base]


def _code_named(column: Optional[str]) -> Optional[str]:
    """A column name that is itself a language code (a column 'fr' holds French), else None."""
    return column if column and column.lower() in LANGUAGE_NAMES else None


def tokenizer_language_codes(tokenizer) -> list[str]:
    """The language codes a tokenizer knows (mBART, mBART-50, M2M100: lang_code_to_id; NLLB: its extra special
    tokens); [] for tokenizers without them."""
    if not hasattr(tokenizer, "src_lang"):
        return []
    if isinstance(getattr(tokenizer, "lang_code_to_id", None), dict):
        return list(tokenizer.lang_code_to_id)
    extra = getattr(tokenizer, "extra_special_tokens", None)
    return [str(token) for token in extra] if isinstance(extra, (list, tuple)) else []


def language_setup(tokenizer, source_lang: Optional[str], target_lang: Optional[str]) -> dict[str, Any]:
    """What a model with language codes needs, for the run's state: the tokenizer's src_lang/tgt_lang
    (`tokenizer_languages`), the generation settings that make it write the target language (`generation`),
    and for multilingual Marian models the target token to put before each source (`target_token`)."""
    codes = tokenizer_language_codes(tokenizer)
    if codes:
        for code, flag in ((source_lang, "--source-lang"), (target_lang, "--target-lang")):
            check_code(code, flag, codes, type(tokenizer).__name__)
        lang_id = getattr(tokenizer, "get_lang_id", None) or tokenizer.convert_tokens_to_ids
        target_id = int(lang_id(target_lang))
        # mBART (cc25 and its fine-tunes) ends targets with the code and starts the decoder with it; the others
        # (mBART-50, NLLB, M2M100) start targets with it, so generation must force it as the first token.
        key = "decoder_start_token_id" if type(tokenizer).__name__.startswith("MBartTokenizer") else \
            "forced_bos_token_id"
        return {"tokenizer_languages": {"src_lang": source_lang, "tgt_lang": target_lang},
                "generation": {key: target_id}}
    marian = [str(c)[2:-2] for c in getattr(tokenizer, "supported_language_codes", None) or []]
    if marian:
        check_code(target_lang, "--target-lang", marian, type(tokenizer).__name__)
        return {"target_token": f">>{target_lang}<<"}
    return {}


def check_code(code: Optional[str], flag: str, codes: list[str], tokenizer_name: str) -> None:
    if not code:
        raise UsageError(f"this model ({tokenizer_name}) translates between language codes: pass --source-lang and "
                         f"--target-lang (e.g. {', '.join(codes[:4])})")
    if code in codes:
        return
    close = [c for c in codes if c.split("_")[0] == code.split("_")[0]] or difflib.get_close_matches(code, codes, n=3)
    hint = f"did you mean {' or '.join(close[:3])}? " if close else ""
    raise UsageError(f"unknown language code '{code}' ({flag}) for {tokenizer_name}; {hint}it knows {len(codes)} codes "
                     f"such as {', '.join(codes[:6])}")


def set_tokenizer_languages(tokenizer, state: dict[str, Any]) -> None:
    """Set src_lang/tgt_lang on a tokenizer with language codes: its special tokens follow them."""
    for key, value in (state.get("tokenizer_languages") or {}).items():
        setattr(tokenizer, key, value)


# --------------------------------------------------------------------------------------------------
# Data


def check_translation_dicts(rows, source_lang: str, target_lang: str, where: str, ids: Optional[list] = None) -> None:
    """UsageError when the translation dicts lack a language or a row has no text in one."""
    from ftune.data import check_no_missing

    feature = rows.features[TRANSLATION_COLUMN]
    languages = list(feature) if isinstance(feature, dict) else list(getattr(feature, "languages", []) or [])
    for code, flag in ((source_lang, "--source-lang"), (target_lang, "--target-lang")):
        if code not in languages:
            raise UsageError(f"unknown language code '{code}' ({flag}): the {TRANSLATION_COLUMN} dicts of {where} "
                             f"hold {', '.join(languages) or 'no languages'}")
    flat = rows.select_columns([TRANSLATION_COLUMN]).flatten()
    check_no_missing(flat, [f"{TRANSLATION_COLUMN}.{source_lang}", f"{TRANSLATION_COLUMN}.{target_lang}"], where,
                     ids=ids)


def load_tsv_pairs(data: Optional[str], header_names: set[str]):
    """A DatasetDict from .tsv files of sentence pairs (a file, or a folder of train/dev/test .tsv files); None
    for other data.

    Lines are split at tabs only (quotes are text, not CSV quoting). The first line is a header when its first
    two fields are `header_names` (the --source-column/--target-column or language codes given) or
    source/target (src/tgt); then the columns are named by it. Otherwise the file has no header: every line is
    a pair, the first field the source, the second the target (columns `source` and `target`; further fields
    are ignored). Blank lines are skipped.
    """
    if not data:
        return None
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".tsv":
            return None
        groups = {"train": [path]}
    elif path.is_dir() and not (path / "dataset_dict.json").is_file():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in
                       (".tsv", ".csv", ".json", ".jsonl", ".parquet", ".txt"))
        if not files or any(f.suffix.lower() != ".tsv" for f in files):
            return None
        groups = files_by_split(files)
    else:
        return None
    from ftune.data import quiet_datasets

    datasets = quiet_datasets()

    splits = {}
    for split, files in groups.items():
        tables = [read_tsv_pairs(file, header_names) for file in files]
        if len({tuple(t) for t in tables}) > 1:
            raise UsageError(f"{data}: the files of split '{split}' have different columns; give them one header")
        splits[split] = datasets.Dataset.from_dict({k: [v for t in tables for v in t[k]] for k in tables[0]})
        if len(splits[split]) == 0:
            raise UsageError(f"{data}: split '{split}' has no pairs; give lines of source<TAB>target")
    return datasets.DatasetDict(splits)


def read_tsv_pairs(file: Path, header_names: set[str]) -> dict[str, list[str]]:
    """The columns of one pair file (see `load_tsv_pairs`)."""
    with file.open(encoding="utf-8", errors="replace") as handle:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, 1) if line.strip()]
    if not lines:
        return {"source": [], "target": []}
    first = [field.strip() for field in lines[0][1].split("\t")]
    known = [{"source", "target"}, {"src", "tgt"}, header_names]
    has_header = len(first) >= 2 and any(len(names) >= 2 and set(first[:2]) <= names for names in known)
    names = first if has_header else ["source", "target"]
    columns: dict[str, list[str]] = {name: [] for name in names}
    for number, line in lines[1:] if has_header else lines:
        fields = line.split("\t")
        if len(fields) < 2 or (has_header and len(fields) != len(names)):
            want = f"{len(names)} tab-separated fields as its header" if has_header else "a source<TAB>target pair"
            raise UsageError(f"{file} line {number} has {len(fields)} field(s); each line must hold {want}")
        for name, value in zip(names, fields):
            columns[name].append(value)
    return columns


TASK = TranslateTask()
