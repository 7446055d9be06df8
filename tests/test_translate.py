"""`ftune translate` end to end on a tiny T5 and a tiny NLLB (M2M100 with language codes): data layouts, the T5
prefix, language codes, BLEU/chrF, train -> eval -> predict -> generate -> merge (full and LoRA)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import held_out_rows, read_json, read_jsonl, task_recipes, train_run

# A toy language whose words are other words of the tiny tokenizers' vocabulary: learnable in a few steps.
LEXICON = {"cat": "paper", "dog": "model", "bird": "data", "fish": "story", "house": "movie", "tree": "film",
           "river": "actor", "city": "plot"}
FAST = ["--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--max-length", "24", "--max-target-length", "8",
        "--val-fraction", "0.2", "--logging-steps", "10", "--precision", "fp32"]  # fp32 on any CPU


def pairs(n: int, seed: int = 0, words=(2, 5)) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    found = []
    for _ in range(n):
        source = [rng.choice(list(LEXICON)) for _ in range(rng.randint(*words))]
        found.append((" ".join(source), " ".join(LEXICON[w] for w in source)))
    return found


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hub_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"id": f"t{i}", "translation": {"en": en, "fr": fr}} for i, (en, fr) in enumerate(pairs(n, seed))]


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", hub_rows(60))


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, tiny_t5, hub_file):
    return train_run(tmp_path_factory, "translate", "t5", "--model", tiny_t5, "--data", hub_file, "--source-lang", "en",
                     "--target-lang", "fr", *FAST)


def build_tiny_nllb(folder: Path) -> Path:
    """An NLLB tokenizer (its 202 language codes are special tokens) over a small BPE, and a tiny M2M100."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    from tests.tiny_models import corpus

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300,
                                                          special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = NllbTokenizer(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]],
                              model_max_length=256)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                          decoder_ffn_dim=128, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory) -> Path:
    return build_tiny_nllb(tmp_path_factory.mktemp("models") / "tiny-nllb")


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.tsv"
    path.write_text("".join(f"{en}\t{xx}\n" for en, xx in pairs(50, seed=2)))
    return path


@pytest.fixture(scope="module")
def nllb_run(tmp_path_factory, tiny_nllb, pairs_tsv):
    return train_run(tmp_path_factory, "translate", "nllb", "--model", tiny_nllb, "--data", pairs_tsv,
                     "--source-lang", "eng_Latn", "--target-lang", "fra_Latn", *FAST, "--max-steps", "10")


def run_state(run: Path):
    """The run's task state, read back from its ftune.yaml as `ftune eval` reads it."""
    from ftune.rundir import open_run

    return open_run(run).state


# ---- a T5 run on the Hub layout -------------------------------------------------------------------


def test_t5_run_writes_the_run_directory(t5_run):
    names = {p.name for p in t5_run.path.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "ftune.yaml", "split.json",
                "train_results.json", "trainer_state.json", "eval_results.json", "eval_predictions.jsonl",
                "eval_details.json", "README.md"}
    assert expected <= names
    metrics = read_json(t5_run.path / "eval_results.json")
    assert 0.0 <= metrics["eval_bleu"] <= 100.0 and 0.0 <= metrics["eval_chrf"] <= 100.0
    assert 0 < metrics["eval_gen_len"] <= 8  # at most --max-target-length new tokens
    state = read_json(t5_run.path / "trainer_state.json")
    assert any("eval_bleu" in entry for entry in state["log_history"])
    assert "eval_bleu" in (t5_run.path / "README.md").read_text()
    details = read_json(t5_run.path / "eval_details.json")
    assert details["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


@pytest.mark.numerics
def test_bleu_and_chrf_recomputed_with_sacrebleu(t5_run):
    import sacrebleu

    predictions = read_jsonl(t5_run.path / "eval_predictions.jsonl")
    rows = held_out_rows(t5_run.path)
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    assert [p["source"] for p in predictions] == [r["translation"]["en"] for r in rows]
    assert [p["reference"] for p in predictions] == [r["translation"]["fr"] for r in rows]
    assert {"id", "source", "prediction", "reference"} <= predictions[0].keys()
    hypotheses, references = [p["prediction"] for p in predictions], [p["reference"] for p in predictions]
    metrics = read_json(t5_run.path / "eval_results.json")
    assert metrics["eval_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=1e-9)
    assert metrics["eval_chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score, abs=1e-9)
    assert metrics["eval_chrf"] > 0  # the toy language is learnable: some characters come out right


def test_t5_prefix_names_the_languages(t5_run, tiny_t5):
    import datasets
    from transformers import AutoTokenizer

    from ftune.config import resolve_config
    from ftune.tasks.translate import TASK

    state = run_state(t5_run.path)
    assert state.source_prefix == "translate English to French: " and state.layout == "translation"
    config = resolve_config(TASK.options_class, layers=[("test", {"data": "x", "max_length": 64})])
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    rows = datasets.Dataset.from_list(hub_rows(1))
    features = TASK.features(config, tokenizer, rows, state, purpose="eval")
    source, target = rows[0]["translation"]["en"], rows[0]["translation"]["fr"]
    assert features[0]["input_ids"] == tokenizer("translate English to French: " + source)["input_ids"]
    assert features[0]["labels"] == tokenizer(text_target=target)["input_ids"]


def test_eval_reproduces_training_metrics(t5_run, ftune, tmp_path):
    result = ftune("eval", t5_run.path, "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    trained, evaluated = read_json(t5_run.path / "eval_results.json"), read_json(tmp_path / "eval_results.json")
    assert evaluated.keys() == trained.keys()
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert read_jsonl(tmp_path / "eval_predictions.jsonl") == read_jsonl(t5_run.path / "eval_predictions.jsonl")


def test_predict_and_generate_give_the_evaluated_translations(t5_run, ftune, tmp_path):
    held = read_jsonl(t5_run.path / "eval_predictions.jsonl")
    rows = held_out_rows(t5_run.path)
    # The Hub layout as input: the source language of each translation dict is read.
    inputs = write_jsonl(tmp_path / "in.jsonl", rows)
    result = ftune("predict", t5_run.path, "--input", inputs, "--output", tmp_path / "out.jsonl", "--batch-size", "16")
    assert result.exit_code == 0, result
    predicted = read_jsonl(tmp_path / "out.jsonl")
    assert [p["translation_text"] for p in predicted] == [h["prediction"] for h in held]
    assert [p["translation"] for p in predicted] == [r["translation"] for r in rows]  # the input row is kept

    result = ftune("predict", t5_run.path, "--text", held[0]["source"], "--num-beams", "2", "--max-new-tokens", "3")
    assert result.exit_code == 0, result
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["en"] == held[0]["source"] and isinstance(line["translation_text"], str)

    prompt = "translate English to French: " + held[0]["source"]
    result = ftune("generate", "--model", t5_run.path, "--prompt", prompt, "--max-new-tokens", "8", "--no-stream")
    assert result.exit_code == 0, result
    assert result.stdout.strip() == held[0]["prediction"], (result.stdout, held[0], result.stderr)


# ---- language codes: a tiny NLLB ------------------------------------------------------------------


def test_nllb_language_codes_reach_tokenizer_and_generation(nllb_run, tiny_nllb):
    import datasets
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ftune.config import resolve_config
    from ftune.tasks.translate import TASK

    tokenizer = AutoTokenizer.from_pretrained(tiny_nllb)
    source_id, target_id = tokenizer.convert_tokens_to_ids(["eng_Latn", "fra_Latn"])
    assert source_id != tokenizer.unk_token_id and target_id != tokenizer.unk_token_id
    state = run_state(nllb_run.path)
    assert state.tokenizer_languages == {"src_lang": "eng_Latn", "tgt_lang": "fra_Latn"}
    assert state.generation == {"forced_bos_token_id": target_id} and state.source_prefix == ""
    assert state.columns == {"source": "source", "target": "target"}  # a headerless .tsv
    assert read_json(nllb_run.path / "generation_config.json")["forced_bos_token_id"] == target_id

    # Sources start with the source code, targets with the target code (a fresh tokenizer set up by the task).
    config = resolve_config(TASK.options_class, layers=[("test", {"data": "x", "max_length": 24})])
    rows = datasets.Dataset.from_list([{"source": "cat dog", "target": "paper model"}])
    features = TASK.features(config, AutoTokenizer.from_pretrained(tiny_nllb, src_lang="deu_Latn"), rows, state,
                             purpose="eval")
    assert features[0]["input_ids"][0] == source_id and features[0]["labels"][0] == target_id

    # The saved model alone writes the target language first; evaluation did the same.
    model = AutoModelForSeq2SeqLM.from_pretrained(nllb_run.path).eval()
    encoded = tokenizer(["cat dog"], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**encoded, max_new_tokens=4)
    assert generated[0, 1].item() == target_id
    predictions = read_jsonl(nllb_run.path / "eval_predictions.jsonl")
    assert all("fra_Latn" not in p["prediction"] for p in predictions)  # the code is a special token, not text


@pytest.mark.filterwarnings("ignore:Recommended")  # Marian's advice to install sacremoses, unused here
def test_language_code_resolution_on_real_tokenizer_classes(tmp_path):
    """mBART (the decoder starts with the target code), mBART-50 and M2M100 (a forced first token) and a
    multilingual Marian tokenizer (a >>fr<< token before the source), built offline from the real classes."""
    import io

    import sentencepiece as spm
    from transformers import M2M100Tokenizer, MarianTokenizer, MBart50Tokenizer, MBartTokenizer

    from ftune.errors import UsageError
    from ftune.tasks.translate import language_setup
    from tests.tiny_models import corpus

    mbart = MBartTokenizer()
    assert language_setup(mbart, "en_XX", "ro_RO") == {
        "tokenizer_languages": {"src_lang": "en_XX", "tgt_lang": "ro_RO"},
        "generation": {"decoder_start_token_id": mbart.convert_tokens_to_ids("ro_RO")}}
    mbart50 = MBart50Tokenizer()
    assert language_setup(mbart50, "en_XX", "fr_XX")["generation"] == {
        "forced_bos_token_id": mbart50.convert_tokens_to_ids("fr_XX")}
    with pytest.raises(UsageError, match="unknown language code 'fr' .*did you mean fr_XX"):
        language_setup(mbart50, "en_XX", "fr")

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model, vocab_size=60,
                                   minloglevel=2)
    (tmp_path / "spm.model").write_bytes(model.getvalue())
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {"</s>": 0, "<unk>": 1, ">>fr<<": 2, ">>de<<": 3}
    for i in range(pieces.get_piece_size()):
        vocab.setdefault(pieces.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    marian = MarianTokenizer(source_spm=str(tmp_path / "spm.model"), target_spm=str(tmp_path / "spm.model"),
                             vocab=str(tmp_path / "vocab.json"))
    assert language_setup(marian, "en", "de") == {"target_token": ">>de<<"}
    with pytest.raises(UsageError, match="unknown language code 'es' .*it knows 2 codes such as fr, de"):
        language_setup(marian, "en", "es")

    # M2M100: codes ("fr") that are not themselves tokens ("__fr__"); their ids come from get_lang_id.
    m2m_vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in vocab:
        m2m_vocab.setdefault(piece, len(m2m_vocab))
    (tmp_path / "m2m.json").write_text(json.dumps(m2m_vocab))
    m2m = M2M100Tokenizer(vocab_file=str(tmp_path / "m2m.json"), spm_file=str(tmp_path / "spm.model"))
    assert language_setup(m2m, "en", "fr")["generation"] == {"forced_bos_token_id": m2m.get_lang_id("fr")}
    assert m2m.convert_ids_to_tokens(m2m.get_lang_id("fr")) == "__fr__"


# ---- data layouts ---------------------------------------------------------------------------------


def _source(data: Path, **options):
    from ftune.config import resolve_config
    from ftune.tasks.translate import TASK

    config = resolve_config(TASK.options_class, layers=[("test", {"data": str(data), **options})])
    source = TASK.load_source(config, str(data), None)
    return source, TASK.resolve_columns(config, source["train"].column_names)


def test_tsv_pairs_with_and_without_a_header(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text('the "cat"\tle "chat"\textra field\n\nthe dog\tle chien\n')
    source, columns = _source(plain)
    assert columns == {"source": "source", "target": "target"}
    assert source["train"]["source"] == ['the "cat"', "the dog"]  # quotes are text; blank lines skipped
    assert source["train"]["target"] == ['le "chat"', "le chien"]

    headed = tmp_path / "headed.tsv"
    headed.write_text("en\tfr\nthe cat\tle chat\n")
    source, columns = _source(headed, source_lang="en", target_lang="fr")
    assert columns == {"source": "en", "target": "fr"} and source["train"]["en"] == ["the cat"]
    # Without the language flags, "en<TAB>fr" is just a first pair.
    source, columns = _source(headed)
    assert source["train"]["source"] == ["en", "the cat"]

    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.tsv").write_text("a\tb\nc\td\n")
    (folder / "dev.tsv").write_text("e\tf\n")
    source, _ = _source(folder)
    assert set(source) == {"train", "validation"} and source["validation"]["target"] == ["f"]


def test_columns_named_by_language_or_given(tmp_path):
    data = write_jsonl(tmp_path / "cols.jsonl", [{"english": en, "german": xx} for en, xx in pairs(4)])
    _, columns = _source(data, source_column="english", target_column="german")
    assert columns == {"source": "english", "target": "german"}
    data = write_jsonl(tmp_path / "codes.jsonl", [{"en": en, "de": xx} for en, xx in pairs(4)])
    _, columns = _source(data, source_lang="en", target_lang="de")
    assert columns == {"source": "en", "target": "de"}


def test_translate_recipes_resolve():
    found = task_recipes("translate")
    assert {"translate-t5-small", "translate-t5-small-lora"} <= set(found)
    for _, config in found.values():
        assert config.task_options.source_lang == "en" and config.task_options.target_lang == "ro"
    assert found["translate-t5-small-lora"][0]["lora"] is True


# ---- LoRA -----------------------------------------------------------------------------------------


def test_lora_round_trip_and_merge_give_equal_outputs(tiny_t5, tmp_path, ftune):
    import torch
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    data = write_jsonl(tmp_path / "cols.jsonl", [{"english": en, "other": xx} for en, xx in pairs(40, seed=3)])
    run = tmp_path / "run"
    result = ftune("translate", "--model", tiny_t5, "--data", data, "--source-column", "english", "--target-column",
                   "other", "--lora", "--lora-targets", "q,k,v,o,wi,wo", "--output-dir", run, *FAST, "--max-steps",
                   "10", "--lr", "1e-2")
    assert result.exit_code == 0, result
    assert "no --source-lang/--target-lang: T5 gets no" in result.stderr  # a note, not an error
    assert run_state(run).source_prefix == ""
    assert read_json(run / "adapter_config.json")["task_type"] == "SEQ_2_SEQ_LM"
    assert not (run / "model.safetensors").exists()

    result = ftune("eval", run, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result
    trained, evaluated = read_json(run / "eval_results.json"), read_json(tmp_path / "eval" / "eval_results.json")
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    result = ftune("merge", run, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 0, result
    tokenizer = AutoTokenizer.from_pretrained(run)
    encoded = tokenizer(["cat dog", "river city fish"], padding=True, return_tensors="pt")
    labels = tokenizer(text_target=["paper model", "actor plot story"], padding=True, return_tensors="pt")["input_ids"]
    adapted = AutoPeftModelForSeq2SeqLM.from_pretrained(run).eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(**encoded, labels=labels).logits, merged(**encoded, labels=labels).logits,
                                   rtol=1e-4, atol=1e-4)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["t5-code", "nllb-code", "dict-code", "no-langs", "one-lang", "missing-column",
                                  "no-columns", "tsv-line"])
def test_bad_input_is_one_line_with_exit_code_2(case, ftune, tmp_path, hub_file, tiny_t5, tiny_nllb, pairs_tsv):
    model, data, args = tiny_t5, hub_file, []
    if case == "t5-code":
        args, expected = ["--source-lang", "en", "--target-lang", "xx"], "unknown language code 'xx' (--target-lang)"
    elif case == "nllb-code":
        model, data = tiny_nllb, pairs_tsv
        args, expected = ["--source-lang", "eng_Latn", "--target-lang", "fra"], "did you mean fra_Latn"
    elif case == "dict-code":
        args, expected = ["--source-lang", "en", "--target-lang", "de"], "translation dicts of the training split " \
                                                                          "hold en, fr"
    elif case == "no-langs":
        expected = "pass --source-lang and --target-lang to pick the direction"
    elif case == "one-lang":
        args, expected = ["--source-lang", "en"], "--source-lang needs --target-lang too"
    elif case == "missing-column":
        args, expected = ["--source-column", "english"], "no column 'english' for source text (--source-column); " \
                                                        "the columns are: id, translation"
    elif case == "no-columns":
        data = write_jsonl(tmp_path / "odd.jsonl", [{"a": "x", "b": "y"}] * 5)
        expected = "cannot tell which columns hold the source and target texts"
    else:
        data = tmp_path / "bad.tsv"
        data.write_text("the cat\tle chat\nthe dog le chien\n")
        expected = "bad.tsv line 2 has 1 field(s); each line must hold a source<TAB>target pair"
    result = ftune("translate", "--model", model, "--data", data, "--output-dir", tmp_path / "run", "--max-steps",
                   "1", *args)
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_predict_input_without_a_source_column(t5_run, ftune, tmp_path):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "cat dog"}])
    result = ftune("predict", t5_run.path, "--input", inputs)
    assert result.exit_code == 2 and "no column 'translation' or 'en'" in result.stderr and "text" in result.stderr


# ---- rows keep their predictions ------------------------------------------------------------------


def test_rows_keep_their_translations(tiny_t5, ftune, tmp_path):
    """Rows of very different lengths: scored with the split == scored alone == `ftune predict`."""
    from tests.test_row_order import varied_lengths

    rows = []
    for i, n in enumerate(varied_lengths(24)):
        (en, xx), = pairs(1, seed=100 + i, words=(max(1, n // 3), max(1, n // 3)))
        rows.append({"id": f"r{i}", "translation": {"en": en, "fr": xx}})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "run"
    result = ftune("translate", "--model", tiny_t5, "--data", data, "--source-lang", "en", "--target-lang", "fr",
                   "--output-dir", run, "--val-fraction", "0.5", "--max-steps", "4", "--batch-size", "4", "--lr",
                   "3e-3", "--max-length", "64", "--max-target-length", "6")
    assert result.exit_code == 0, result
    by_id = {r["id"]: r for r in rows}
    held = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == by_id[p["id"]]["translation"]["fr"] for p in held)
    assert all(p["source"] == by_id[p["id"]]["translation"]["en"] for p in held)
    ordered = sorted(held, key=lambda p: len(p["source"]))
    for picked in (ordered[0], ordered[-1]):
        one = write_jsonl(tmp_path / f"{picked['id']}.jsonl", [by_id[picked["id"]]])
        result = ftune("eval", run, "--data", one, "--output-dir", tmp_path / f"{picked['id']}-eval")
        assert result.exit_code == 0, result
        (alone,) = read_jsonl(tmp_path / f"{picked['id']}-eval" / "eval_predictions.jsonl")
        assert alone["id"] == picked["id"] and alone["prediction"] == picked["prediction"]
        assert alone["generated_tokens"] == picked["generated_tokens"]
        predicted = ftune("predict", run, "--text", picked["source"])
        assert predicted.exit_code == 0, predicted
        assert json.loads(predicted.stdout.strip().splitlines()[-1])["translation_text"] == picked["prediction"]
