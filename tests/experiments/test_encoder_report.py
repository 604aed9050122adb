"""The encoder report's retrieval set and recall@k."""

import numpy as np

from experiments import encoder, encoder_report


def test_retrieval_set_is_deterministic_and_paired():
  queries, docs = encoder_report.retrieval_set()
  assert len(queries) == len(docs) > 100
  assert (queries, docs) == encoder_report.retrieval_set()
  assert len(set(docs)) == len(docs) and all("(" in d for d in docs)


def test_recall_at_k():
  rng = np.random.default_rng(0)
  docs = rng.normal(size=(20, 16))
  assert encoder_report.recall_at(docs, docs) == {"recall@1": 1.0, "recall@5": 1.0,
                                                  "recall@10": 1.0}
  shuffled = docs[np.r_[1:20, 0]]  # query i's nearest is document i + 1: never a hit at 1
  assert encoder_report.recall_at(shuffled, docs)["recall@1"] == 0.0


def test_encoder_configs():
  assert encoder.get_config().train.objective == "mlm"
  cls = encoder.get_config("classify")
  assert (cls.head, cls.data.kind, cls.train.objective) == ("classify", "labelled", "classify")
  assert encoder.get_config("moe").model.n_experts == 8
  mlm, cls = encoder_report._configs("tiny")  # pylint: disable=protected-access
  assert mlm.model == cls.model
