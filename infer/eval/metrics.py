"""Text metrics: exact match, token F1, BLEU / chrF (sacrebleu), ROUGE (rouge-score), diversity.

Every metric is `prepare(predictions, references) -> Prepared`: per-example values (for the
per-example jsonl) and `value(idx)`, the aggregate over the rows `idx`, so bootstrap
resampling (bootstrap.py) recomputes exactly the reported aggregate. Corpus-level BLEU and
chrF are sacrebleu's `corpus_score` (variable reference counts allowed); their resamples sum
sacrebleu's own per-sentence statistics, as sacrebleu's significance tests do. Scales follow
the libraries: BLEU and chrF 0-100, everything else 0-1 (length in whitespace tokens).
"""

import collections
import dataclasses
import re
import string
from typing import Callable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, punctuation and articles (a, an, the) removed, blanks collapsed.

  The usual normalisation of extractive QA (SQuAD), so "The Cat." matches "cat".
  """
  text = str(text).lower().translate(_PUNCT)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised reference."""
  got = normalize_answer(prediction)
  return float(any(got == normalize_answer(r) for r in references))


def _f1(prediction: str, reference: str) -> float:
  got, want = normalize_answer(prediction).split(), normalize_answer(reference).split()
  if not got or not want:
    return float(got == want)  # both empty: a match; one empty: nothing in common
  common = sum((collections.Counter(got) & collections.Counter(want)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(got), common / len(want)
  return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
  """Bag-of-tokens F1 of the normalised texts, the best over references."""
  return max(_f1(prediction, r) for r in references)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple]:
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(predictions: Sequence[str], n: int) -> float:
  """Distinct n-grams over all predictions / all n-grams (Li et al. 2016); 0 when none."""
  grams = [g for p in predictions for g in ngrams(p.split(), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def repetition(prediction: str, n: int = 4) -> float:
  """Share of a prediction's n-grams that repeat an earlier one (rep-n); 0 when none."""
  grams = ngrams(prediction.split(), n)
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@dataclasses.dataclass
class Prepared:
  """One metric over one data set: per-example values and the aggregate of any row subset."""
  name: str
  per_example: np.ndarray | None  # float per row (sentence-level for BLEU/chrF), or None
  value: Callable[[np.ndarray], float]
  n: int
  signature: str = ""  # the library's own description of the settings, when it has one


def mean_metric(name: str, values: Sequence[float]) -> Prepared:
  """A metric whose aggregate is the mean of its per-example values."""
  values_N = np.asarray(values, np.float64)
  return Prepared(name, values_N, lambda idx: float(values_N[idx].mean()) if len(idx) else
                  float("nan"), len(values_N))


def _ref_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
  """sacrebleu's layout: one stream per reference slot, None where a row has fewer refs."""
  width = max(len(r) for r in references)
  return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _sacrebleu(name: str, metric, sentence_metric, predictions, references) -> Prepared:
  streams = _ref_streams(references)
  corpus = metric.corpus_score(list(predictions), streams).score
  stats_NK = np.asarray(metric._extract_corpus_statistics(list(predictions), streams))
  sentence = [sentence_metric.sentence_score(p, list(r)).score
              for p, r in zip(predictions, references)]
  n = len(predictions)

  def value(idx):
    if len(idx) == n and np.array_equal(idx, np.arange(n)):
      return float(corpus)
    return float(metric._compute_score_from_stats(stats_NK[idx].sum(0)).score)

  return Prepared(name, np.asarray(sentence), value, n, str(metric.get_signature()))


def bleu_metric(sentence: bool = False):
  """sacrebleu's default corpus BLEU; effective order for sentence-level (per-example) BLEU."""
  import sacrebleu
  return sacrebleu.metrics.BLEU(effective_order=sentence)


def chrf_metric(sentence: bool = False):
  del sentence
  import sacrebleu
  return sacrebleu.metrics.CHRF()


def _rouge(names: Sequence[str], predictions, references) -> list[Prepared]:
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
  scores = [scorer.score_multi(list(refs), pred) for pred, refs in zip(predictions, references)]
  return [mean_metric(name, [s[name].fmeasure for s in scores]) for name in names]


def _distinct(n: int, predictions) -> Prepared:
  preds = list(predictions)
  return Prepared(f"distinct{n}", None, lambda idx: distinct_n([preds[i] for i in idx], n),
                  len(preds))


# name -> what `prepare` computes; "rouge" and "distinct" expand to several aggregates.
METRICS = ("exact", "f1", "bleu", "chrf", "rouge", "rouge1", "rouge2", "rougeL", "distinct",
           "distinct1", "distinct2", "repetition", "length")
_EXPAND = {"rouge": ("rouge1", "rouge2", "rougeL"), "distinct": ("distinct1", "distinct2")}


def parse_metrics(spec: str | Sequence[str], extra: Sequence[str] = ()) -> list[str]:
  """Comma-separated names -> expanded, de-duplicated list; unknown names are errors."""
  names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
  allowed = set(METRICS) | set(extra)
  unknown = [m for m in names if m not in allowed]
  if unknown:
    raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(allowed)}")
  out = []
  for name in names:
    for m in _EXPAND.get(name, (name,)):
      if m not in out:
        out.append(m)
  return out


def prepare(names: Sequence[str], predictions: Sequence[str],
            references: Sequence[Sequence[str]]) -> dict[str, Prepared]:
  """Each named metric prepared on (predictions, references); references are lists per row."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
  if any(not refs for refs in references) and any(
      m in names for m in ("exact", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL")):
    raise ValueError("every row needs at least one reference for reference-based metrics")
  names = parse_metrics(names)
  out: dict[str, Prepared] = {}
  rouge = [m for m in names if m.startswith("rouge")]
  if rouge:
    out.update({p.name: p for p in _rouge(rouge, predictions, references)})
  for name in names:
    if name == "exact":
      out[name] = mean_metric(name, [exact_match(p, r)
                                     for p, r in zip(predictions, references)])
    elif name == "f1":
      out[name] = mean_metric(name, [token_f1(p, r) for p, r in zip(predictions, references)])
    elif name == "bleu":
      out[name] = _sacrebleu(name, bleu_metric(), bleu_metric(True), predictions, references)
    elif name == "chrf":
      out[name] = _sacrebleu(name, chrf_metric(), chrf_metric(True), predictions, references)
    elif name in ("distinct1", "distinct2"):
      out[name] = _distinct(int(name[-1]), predictions)
    elif name == "repetition":
      out[name] = mean_metric(name, [repetition(p) for p in predictions])
    elif name == "length":
      out[name] = mean_metric(name, [len(p.split()) for p in predictions])
  return {name: out[name] for name in names}


def signatures(prepared: dict[str, Prepared]) -> dict:
  """Library versions and metric settings, recorded with the scores."""
  import sacrebleu
  out = {"sacrebleu": sacrebleu.__version__, "rouge": "rouge-score F-measure, Porter stemmer, "
         "best over references", "exact/f1": "SQuAD normalisation, best over references",
         "repetition": "rep-4 per example", "length": "whitespace tokens"}
  out.update({name: p.signature for name, p in prepared.items() if p.signature})
  return out
