"""Tiny models and tokenizers built offline in well under a second, for the tests.

Each builder makes a small tokenizer from `corpus()` with the `tokenizers` library, wraps it in
PreTrainedTokenizerFast and saves it with a small randomly initialised model (hidden 64, 2 layers, seeded).

Every build gives the same files, byte for byte, in every process and on every machine (tests/test_tiny_models.py):
a token's id picks its embedding row, so a vocabulary that moved between sessions moved every figure a test trains.
The byte-level BPE trainer is deterministic (its alphabet is sorted, its merges ranked by count, then by ids); the
WordPiece and Unigram vocabularies are computed here, since their trainers are not (see each builder).
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the a an cat dog bird fish runs jumps sleeps eats quickly slowly happy sad big small red blue green "
         "house tree river mountain city paper model data learns trains predicts good bad great terrible "
         "movie film story plot actor question answer context paris london berlin capital france germany "
         "england summary article document result method approach challenge outcome we propose show").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(n)]


def _seeded():
    """The same random weights every time, so test outcomes do not depend on the session."""
    import torch

    torch.manual_seed(0)


def _words(tok) -> dict[str, int]:
    """How often each pre-tokenized word occurs in `corpus()`, in sorted order."""
    counts: dict[str, int] = {}
    for line in corpus():
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            counts[word] = counts.get(word, 0) + 1
    return dict(sorted(counts.items()))


def _wordpiece_vocab(words: dict[str, int], specials: list[str], vocab_size: int) -> dict[str, int]:
    """What WordPiece training learns (byte-pair merges, "##" marking a piece inside a word), computed in a fixed
    order: the specials, the characters, the "##" characters (each group sorted), then the merge of the most frequent
    adjacent pair, ties to the pair of lower ids as the trainer breaks them, until `vocab_size` or whole words. The
    library's WordPieceTrainer numbers the "##" characters in the order of a hash map, so its ties, and its
    vocabulary, changed from one process to the next."""
    pieces = {word: [word[0]] + ["##" + c for c in word[1:]] for word in words}
    vocab = specials + sorted({c for word in words for c in word}) + sorted({p for w in pieces.values() for p in w[1:]})
    ids = {piece: i for i, piece in enumerate(vocab)}
    while len(vocab) < vocab_size:
        pairs: dict[tuple[str, str], int] = {}
        for word, split in pieces.items():
            for pair in zip(split, split[1:]):
                pairs[pair] = pairs.get(pair, 0) + words[word]
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: (-pairs[pair], ids[pair[0]], ids[pair[1]]))
        merged = first + second[2:]
        for split in pieces.values():
            i = 0
            while i < len(split) - 1:
                if (split[i], split[i + 1]) == (first, second):
                    split[i:i + 2] = [merged]
                i += 1
        if merged not in ids:
            ids[merged] = len(vocab)
            vocab.append(merged)
    return ids


def _fast(tokenizer_obj, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_obj, **special)


def build_bert(folder: Path) -> Path:
    """A BERT saved as BertForPreTraining (so the pooler is kept, and a reloaded classifier is identical)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForPreTraining

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.model = models.WordPiece(_wordpiece_vocab(_words(tok), specials, 300), unk_token="[UNK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    fast = _fast(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]", model_max_length=512)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    _seeded()
    BertForPreTraining(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _byte_level_bpe(vocab_size: int, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def build_gpt2(folder: Path, n_positions: int = 256) -> Path:
    """A GPT-2 with a byte-level BPE tokenizer whose only special token is <|endoftext|> (no pad token)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _byte_level_bpe(400, ["<|endoftext|>"])
    fast = _fast(tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                 model_max_length=n_positions)
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    folder.mkdir(parents=True, exist_ok=True)
    _seeded()
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_bart(folder: Path) -> Path:
    from tokenizers import processors
    from transformers import BartConfig, BartForConditionalGeneration

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = _byte_level_bpe(400, specials)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", bos), ("</s>", eos)])
    fast = _fast(tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                 model_max_length=256)
    config = BartConfig(vocab_size=tok.get_vocab_size(), d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, max_position_embeddings=256, pad_token_id=1, bos_token_id=bos,
                        eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos)
    folder.mkdir(parents=True, exist_ok=True)
    _seeded()
    BartForConditionalGeneration(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_t5(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Config, T5ForConditionalGeneration

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    # The pieces a Unigram trainer keeps from this corpus (each word with and without the word-start mark, each
    # character, the mark and the full stop), listed here: the trainer sums floats in a hash map's order, so which
    # piece wins a near tie could change between processes, and its scores did. Longer pieces score higher, which
    # keeps whole words whole.
    words = {word.strip(".") for line in corpus() for word in line.split()}
    pieces = sorted({"▁", "."} | {c for word in words for c in word} | words | {"▁" + word for word in words})
    tok.model = models.Unigram([(piece, 0.0) for piece in specials] + [(p, len(p) - 10.0) for p in pieces],
                               unk_id=specials.index("<unk>"))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    fast = _fast(tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=256)
    config = T5Config(vocab_size=tok.get_vocab_size(), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                      pad_token_id=tok.token_to_id("<pad>"), eos_token_id=eos, decoder_start_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    _seeded()
    T5ForConditionalGeneration(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
