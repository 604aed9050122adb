"""End to end: masked-LM pretraining, classification with --init_from, embeddings, search."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tests.cli_runner import last_json_line, run_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("encoder")
  bert = str(root / "bert")
  summary = last_json_line(run_module(
      ["train.main", "--config=experiments/encoder.py:tiny", f"--workdir={bert}"]))
  return root, bert, summary


def test_pretrain_then_classify_from_it(runs):
  root, bert, summary = runs
  assert summary["step"] == 4 and np.isfinite(summary["val_loss"])
  with open(os.path.join(bert, "tokenizer", "tokenizer.json")) as f:
    assert json.load(f)["mask_id"] == 259
  data = root / "labelled.jsonl"
  data.write_text("".join(json.dumps({"text": f"{w} {i}", "label": w}) + "\n"
                          for i in range(40) for w in ("spam", "ham")))
  cls = str(root / "cls")
  out = last_json_line(run_module(
      ["train.main", "--config=experiments/encoder.py:classify_tiny", f"--workdir={cls}",
       f"--init_from={bert}", f"--data={data}", "--config.data.val_fraction=0.2"]))
  assert out["how"] == "init_from" and 0.0 <= out["val_accuracy"] <= 1.0
  with open(os.path.join(cls, "config.json")) as f:
    saved = json.load(f)
  assert saved["head"] == "classify" and saved["classify"]["n_labels"] == 2
  bad = root / "bad.jsonl"
  bad.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
  proc = run_module(["train.main", "--config=experiments/encoder.py:classify_tiny",
                     f"--workdir={root / 'cls_bad'}", f"--init_from={bert}", f"--data={bad}"],
                    check=False)
  assert proc.returncode == 1 and f"line 2 of {bad}" in proc.stderr


def test_embed_and_search_cli_match_numpy(runs):
  root, bert, _ = runs
  docs = ["import os and list a directory", "sort a list of numbers in place",
          "parse a URL into parts", "compute the md5 hash of bytes", "open a file for reading"]
  (root / "docs.txt").write_text("\n".join(docs) + "\n")
  vec = str(root / "vectors.npy")
  run_module(["infer.embed", f"--workdir={bert}", f"--input={root / 'docs.txt'}",
              f"--out={vec}"])
  vectors = np.load(vec)
  assert vectors.shape == (5, 32)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  proc = run_module(["infer.embed", f"--workdir={bert}", f"--input={root / 'docs.txt'}",
                     "--query=sort numbers", "--top_k=3", "--json"])
  hits = json.loads(proc.stdout.strip().splitlines()[-1])["hits"]
  # Reference: the API's vectors, one text at a time with no padding, pooled in numpy.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from infer.embed import Embedder, nearest  # pylint: disable=g-import-not-at-top
  emb = Embedder(bert)
  want = []
  for text in docs + ["sort numbers"]:
    ids = jnp.asarray([emb.encode(text)], jnp.int32)
    _, _, hidden = emb.model.apply({"params": emb.params}, ids, return_hidden=True)
    v = np.asarray(hidden[0], np.float64).mean(0)
    want.append(v / np.linalg.norm(v))
  want = np.stack(want)
  np.testing.assert_allclose(vectors, want[:5], atol=2e-5)
  order = np.argsort(-(want[:5] @ want[5]))[:3]
  assert [h["index"] for h in hits] == order.tolist()
  np.testing.assert_allclose([h["score"] for h in hits], (want[:5] @ want[5])[order],
                             atol=2e-5)
  scores, index = nearest(want[5:], want[:5], 3)
  assert index[0].tolist() == order.tolist()


def test_generate_refuses_an_encoder_and_embed_refuses_a_decoder(runs, tmp_path):
  _, bert, _ = runs
  proc = run_module(["infer.generate", f"--workdir={bert}", "--prompt=hi"], check=False)
  assert proc.returncode == 1 and "encoder-only" in proc.stderr and "infer.embed" in proc.stderr
  from model import store  # pylint: disable=g-import-not-at-top
  from model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  decoder = tmp_path / "decoder_run"
  decoder.mkdir()
  store.write_run_config(str(decoder), {"model": dataclasses.asdict(ModelConfig())})
  (tmp_path / "d.txt").write_text("a\n")
  proc = run_module(["infer.embed", f"--workdir={decoder}", f"--input={tmp_path / 'd.txt'}",
                     "--out=/dev/null"], check=False)
  assert proc.returncode == 1 and "--allow_decoder" in proc.stderr
