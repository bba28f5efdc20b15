"""Corpus BLEU-4 with `sacrebleu`, as an offline `evaluate` module (one reference per prediction).

Load by path: `evaluate.load("<repo>/metrics/sacrebleu")`. sacrebleu's own 13a tokenizer, so scores are
comparable across papers that quote sacreBLEU; question-generation papers (Du et al. split) used the older
tokenised, lower-cased multi-bleu script: pass lowercase=True to get closer to those.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU-4 (x 100) from sacrebleu, with its 13a tokenizer."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction.
    lowercase: compare lower-cased text (default False).
Returns:
    bleu: corpus BLEU x 100; precisions: the four n-gram precisions x 100; brevity_penalty; sys_len; ref_len.
"""


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, lowercase=False):
        result = sacrebleu.corpus_bleu(list(predictions), [list(references)], lowercase=lowercase)
        return {
            "bleu": result.score,
            "precisions": list(result.precisions),
            "brevity_penalty": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
        }
