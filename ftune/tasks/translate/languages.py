"""The languages of `ftune translate`: names of language codes for the T5 prefix, the codes a model's tokenizer knows,
and what a model with codes needs to read the source and write the target language (saved in the run's state).
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

from ftune.errors import UsageError

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



def language_name(code: str, flag: str) -> str:
    """The English name of a language code (en, en_XX, en-US ...) for the T5 prefix; UsageError when unknown."""
    base = code.replace("-", "_").split("_")[0].lower()
    if base not in LANGUAGE_NAMES:
        raise UsageError(f"unknown language code '{code}' ({flag}) for the T5 prefix; use an ISO 639-1 code such as "
                         "en, fr, de, ro, or give the prefix yourself with --source-prefix")
    return LANGUAGE_NAMES[base]


def code_named(column: Optional[str]) -> Optional[str]:
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


def set_tokenizer_languages(tokenizer, languages: Optional[dict[str, str]]) -> None:
    """Set src_lang/tgt_lang (a run's `tokenizer_languages`) on a tokenizer with language codes: its special tokens
    follow them."""
    for key, value in (languages or {}).items():
        setattr(tokenizer, key, value)
