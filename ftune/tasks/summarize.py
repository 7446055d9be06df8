"""`ftune summarize`: fine-tune a seq2seq model (T5, BART, an EncoderDecoderModel ...) to write summaries.

A thin layer on the seq2seq base (ftune.tasks.seq2seq): the columns it looks for, T5's "summarize: " prefix,
and ROUGE — the mean per-example `rouge-score` F-measure with stemming, x 100, from ftune's `rouge` metric
module — on the generated summaries against the raw reference summaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ftune.config import option
from ftune.tasks.base import Scores
from ftune.tasks.seq2seq import T5_FAMILY, Seq2SeqOptions, Seq2SeqTask, examples_table, mean_generated_length

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass
class SummarizeOptions(Seq2SeqOptions):
    source_column: Optional[str] = option(None, "Column with the document (detected: article, document, text, "
                                                "dialogue).", panel="Data")
    target_column: Optional[str] = option(None, "Column with the summary (detected: highlights, summary).",
                                          panel="Data")
    source_prefix: str = option("auto", "Text put before each source; 'auto' is 'summarize: ' for T5-family "
                                        "models (t5, mt5, umt5, longt5) and nothing otherwise; '' for none.",
                                panel="Data")
    max_target_length: int = option(128, "Longest summary in tokens: labels are truncated to it and evaluation "
                                          "generates at most this many new tokens.", panel="Data", min=1)
    num_beams: int = option(1, "Beams when generating summaries for evaluation (1: greedy).", min=1)


class SummarizeTask(Seq2SeqTask):
    name = "summarize"
    summary = "Fine-tune a seq2seq model for summarisation."
    options_class = SummarizeOptions
    main_metric = "rougeL"
    metric_module = "rouge"
    reported_metrics = ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len")
    source_columns = ("article", "document", "text", "dialogue")
    target_columns = ("highlights", "summary")
    source_role = "document"
    target_role = "summary"
    output_name = "summary"

    def auto_prefix(self, config, model_type):
        return "summarize: " if model_type in T5_FAMILY else ""

    def metrics(self, config, state, outputs, references, features):
        from ftune.metrics import load_metric

        scores = load_metric(self.metric_module).compute(predictions=[o["prediction"] for o in outputs],
                                                         references=references)
        figures = {**{k: scores[k] for k in ROUGE_TYPES}, "gen_len": mean_generated_length(outputs)}
        return Scores(metrics=figures, table=examples_table(outputs, references))


TASK = SummarizeTask()
