"""Masked-LM corruption statistics, the loss on selected positions only, [MASK] tokenizers."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import ModelConfig
from model.tokenizer import ByteTokenizer, SentencePieceTokenizer, load_tokenizer
from train.config import Config, DataConfig, MlmConfig, TrainConfig
from train.data.mlm import MlmDataset, corrupt, require_mask_id
from train.dataset import TokenDataset
from train.objectives import make_objective
from train.objectives.common import token_cross_entropy
from model.transformer import Transformer

MASK, V = 999, 1000


def test_bert_selection_and_80_10_10_on_a_large_sample():
  rng = np.random.default_rng(0)
  rows, length = 400, 128
  tokens = rng.integers(0, 500, (rows, length))
  valid = np.ones((rows, length), bool)
  valid[:, 100:] = False  # padding is never selected
  sel, masked, randomised, kept = 0, 0, 0, 0
  for tokens_L, valid_L in zip(tokens, valid):
    inputs_L, selected_L = corrupt(rng, tokens_L, valid_L, mask_id=MASK, vocab_size=V)
    assert not selected_L[~valid_L].any()
    assert (inputs_L[~selected_L] == tokens_L[~selected_L]).all()
    assert selected_L.sum() == 15  # round(0.15 * 100), exactly
    sel += selected_L.sum()
    masked += (inputs_L[selected_L] == MASK).sum()
    changed = (inputs_L != tokens_L) & (inputs_L != MASK) & selected_L
    randomised += changed.sum()
    kept += ((inputs_L == tokens_L) & selected_L).sum()
  # 6000 selected: 80% +- ~4 sd, 10% +- ~4 sd (a random token equal to the original counts
  # as kept: 1/1000 of the 10%).
  assert abs(masked / sel - 0.8) < 0.021
  assert abs(randomised / sel - 0.1) < 0.016
  assert abs(kept / sel - 0.1) < 0.016


def test_selection_rate_positions_are_uniform():
  rng = np.random.default_rng(1)
  counts = np.zeros(50)
  for _ in range(2000):
    _, s = corrupt(rng, np.zeros(50, int), np.ones(50, bool), mask_id=MASK, vocab_size=V,
                   mask_rate=0.2)
    counts += s
  rate = counts / 2000
  assert abs(rate.mean() - 0.2) < 1e-9 and rate.min() > 0.15 and rate.max() < 0.25


def test_span_corruption_masks_contiguous_spans():
  rng = np.random.default_rng(2)
  total, runs = 0, 0
  for _ in range(300):
    _, s = corrupt(rng, np.zeros(200, int), np.ones(200, bool), mask_id=MASK, vocab_size=V,
                   span_mean=3.0)
    assert abs(s.sum() - 30) <= 0  # exactly the budget: spans are cut to fit it
    total += s.sum()
    runs += np.sum(s[1:] & ~s[:-1]) + s[0]
  assert 2.0 < total / runs < 4.0  # mean run length ~3 (merged neighbours push it up)


def test_loss_counts_only_selected_positions():
  config = Config(model=ModelConfig(arch="encoder", vocab_size=64, d_model=32, n_layers=1,
                                    n_heads=2, max_len=16),
                  data=DataConfig(kind="mlm", seq_len=16), train=TrainConfig(objective="mlm"))
  model = Transformer(config.model)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 60, (2, 16)).astype(np.int32)
  weights = (rng.random((2, 16)) < 0.3).astype(np.float32)
  batch = {"inputs": tokens, "targets": rng.integers(0, 60, (2, 16)).astype(np.int32),
           "weights": weights, "segment_ids": np.ones((2, 16), np.int32)}
  params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
  loss = make_objective("mlm", model, config)
  loss_sum, weight_sum, _ = loss(params, {}, batch, jax.random.key(0))
  logits, _ = model.apply({"params": params}, tokens)
  ce, _ = token_cross_entropy(logits, jnp.asarray(batch["targets"]))
  assert float(weight_sum) == weights.sum()
  np.testing.assert_allclose(loss_sum, np.sum(np.asarray(ce) * weights), rtol=1e-5)
  # Changing the targets where nothing is selected changes nothing.
  other = dict(batch, targets=np.where(weights > 0, batch["targets"], 0).astype(np.int32))
  np.testing.assert_allclose(loss(params, {}, other, jax.random.key(0))[0], loss_sum,
                             rtol=1e-6)


def test_mlm_objective_refuses_a_decoder():
  config = Config(data=DataConfig(kind="mlm"), train=TrainConfig(objective="mlm"))
  with pytest.raises(ValueError, match="encoder-only"):
    make_objective("mlm", Transformer(config.model), config)


def test_mlm_dataset_is_stateless_and_process_independent():
  base = TokenDataset(np.arange(5000) % 250, 16)
  ds = MlmDataset(base, ByteTokenizer(mask=True), MlmConfig())
  full = ds.batch(0, 3, 8)
  halves = [ds.batch(0, 3, 8, i, 2) for i in range(2)]
  for key in full:
    np.testing.assert_array_equal(full[key], np.concatenate([h[key] for h in halves]))
    np.testing.assert_array_equal(full[key], ds.batch(0, 3, 8)[key])
  assert not np.array_equal(full["weights"], ds.batch(0, 4, 8)["weights"])
  np.testing.assert_array_equal(full["targets"], base.batch(0, 3, 8)["inputs"])
  evals = ds.eval_batches(8, 2)
  np.testing.assert_array_equal(evals[0]["inputs"], ds.eval_batches(8, 2)[0]["inputs"])


def test_mask_symbol_in_tokenizers(tmp_path):
  assert ByteTokenizer().mask_id is None
  assert "mask_id" not in ByteTokenizer().describe()  # old byte runs keep their fingerprint
  byte = ByteTokenizer(mask=True)
  assert (byte.mask_id, byte.vocab_size) == (259, 260)
  byte.save(str(tmp_path / "b"))
  assert load_tokenizer(str(tmp_path / "b")).mask_id == 259
  docs = ["def f(x):\n    return x + 1\nclass Foo:\n    pass  # hello world\n" * 20] * 10
  plain = SentencePieceTokenizer.train(docs, vocab_size=300)
  masked = SentencePieceTokenizer.train(docs, vocab_size=300, mask=True)
  assert plain.mask_id is None and "mask_id" not in plain.describe()
  assert masked.mask_id is not None and masked.encode("[MASK]") == [masked.mask_id]
  masked.save(str(tmp_path / "sp"))
  again = load_tokenizer(str(tmp_path / "sp"))
  assert again.mask_id == masked.mask_id and again.fingerprint == masked.fingerprint
  with pytest.raises(ValueError, match=r"needs a \[MASK\] symbol"):
    require_mask_id(plain)
  with pytest.raises(ValueError, match=r"\[MASK\]"):
    MlmDataset(TokenDataset(np.arange(100), 8), plain, MlmConfig())


def test_mlm_config_checks():
  with pytest.raises(ValueError, match="mask_fraction"):
    MlmConfig(mask_fraction=0.95, random_fraction=0.1)
  with pytest.raises(ValueError, match="data.kind=mlm"):
    Config(model=dataclasses.replace(ModelConfig(), arch="encoder"),
           train=TrainConfig(objective="mlm"))
