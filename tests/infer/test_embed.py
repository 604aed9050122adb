"""Cosine nearest neighbours against a brute-force numpy reference; document reading."""

import numpy as np
import pytest

from infer.embed import nearest, read_documents


def test_nearest_matches_brute_force():
  rng = np.random.default_rng(0)
  docs = rng.normal(size=(50, 8)) * rng.uniform(0.1, 10, (50, 1))  # norms must not matter
  queries = rng.normal(size=(7, 8))
  scores, index = nearest(queries, docs, 5)
  for q in range(7):
    sims = [float(queries[q] @ d / np.linalg.norm(queries[q]) / np.linalg.norm(d)) for d in docs]
    want = sorted(range(50), key=lambda i: -sims[i])[:5]
    assert index[q].tolist() == want
    np.testing.assert_allclose(scores[q], [sims[i] for i in want], rtol=1e-6)
  assert nearest(queries, docs[:3], 10)[1].shape == (7, 3)
  with pytest.raises(ValueError, match="top_k"):
    nearest(queries, docs, 0)


def test_read_documents(tmp_path):
  (tmp_path / "d.txt").write_text("one\n\ntwo words\n")
  assert read_documents(str(tmp_path / "d.txt")) == ["one", "two words"]
  (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
  with pytest.raises(ValueError, match="line 2 of"):
    read_documents(str(tmp_path / "d.jsonl"))
  (tmp_path / "e.txt").write_text("\n\n")
  with pytest.raises(ValueError, match="no documents"):
    read_documents(str(tmp_path / "e.txt"))
  with pytest.raises(FileNotFoundError, match="one document per line"):
    read_documents(str(tmp_path / "missing.txt"))
