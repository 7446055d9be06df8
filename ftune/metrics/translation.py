"""Translation metric for `evaluate`: sacreBLEU corpus BLEU and chrF, both with sacreBLEU's defaults, 0-100.

BLEU is corpus-level (not a mean of sentence scores): 4-gram, exponential smoothing, sacreBLEU's default
"13a" tokenisation, case-sensitive; chrF is character 6-grams, beta 2, no word n-grams (chrF, not chrF++).
One reference per prediction. The signatures say exactly what was computed (e.g. for a paper's table).

    metric = evaluate.load("path/to/ftune/metrics/translation.py")
    metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
"""

import datasets
import evaluate

_DESCRIPTION = "sacreBLEU corpus BLEU and chrF (sacreBLEU defaults), 0-100."
_KWARGS = """
Args:
    predictions: translated texts (strings).
    references: one reference translation (string) per prediction.
Returns:
    bleu, chrf (0-100); bleu_signature, chrf_signature; bleu_precisions (1- to 4-gram, 0-100),
    brevity_penalty, sys_len, ref_len.
"""


class Translation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return translation_scores(predictions, references)


def translation_scores(predictions, references):
    from sacrebleu.metrics import BLEU, CHRF

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(list(predictions), [list(references)])
    chrf_score = chrf.corpus_score(list(predictions), [list(references)])
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_precisions": [float(p) for p in bleu_score.precisions],
        "brevity_penalty": float(bleu_score.bp),
        "sys_len": int(bleu_score.sys_len),
        "ref_len": int(bleu_score.ref_len),
    }
