"""Seq2seq data and objective: the number-words set, jsonl errors, row layout, target-only
loss, sharded == single device, resume bit-exact."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from model import sharding
from model.encoder_decoder import DECODER_START_ID
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data import number_words
from train.data.seq2seq import Seq2SeqDataset, embedded_rows, encode_rows, read_jsonl
from train.step import Trainer


def test_number_words_reference_values():
  cases = {0: ("zero", "zero"), 15: ("fifteen", "quinze"), 42: ("forty-two", "quarenta e dois"),
           100: ("one hundred", "cem"), 101: ("one hundred one", "cento e um"),
           342: ("three hundred forty-two", "trezentos e quarenta e dois"),
           1000: ("one thousand", "mil"), 1020: ("one thousand twenty", "mil e vinte"),
           1500: ("one thousand five hundred", "mil e quinhentos"),
           2342: ("two thousand three hundred forty-two", "dois mil trezentos e quarenta e dois"),
           9999: ("nine thousand nine hundred ninety-nine",
                  "nove mil novecentos e noventa e nove")}
  for n, (en, pt) in cases.items():
    assert (number_words.english(n), number_words.portuguese(n)) == (en, pt), n
  # The mapping is one-to-one in each language.
  assert len({number_words.portuguese(n) for n in range(10000)}) == 10000
  assert len({number_words.english(n) for n in range(10000)}) == 10000


def test_heldout_numbers_never_trained_and_deterministic():
  train, val, heldout = embedded_rows(3000, 300, seed=1)
  assert {r["number"] for r in heldout}.isdisjoint({r["number"] for r in train + val})
  assert {r["task"] for r in train} == set(number_words.DIRECTIONS)
  assert embedded_rows(3000, 300, seed=1) == (train, val, heldout)
  row = heldout[0]
  src, tgt = row["task"].split("->")
  assert row["source"] == f"{row['task']}: {number_words.render(row['number'], src)}"
  assert row["target"] == number_words.render(row["number"], tgt)


def test_jsonl_errors_name_file_and_line(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text('{"source": "a", "target": "b"}\n\n{"source": "a"}\n')
  with pytest.raises(ValueError, match=r"line 3 of .*pairs.jsonl.*'source' and 'target'"):
    read_jsonl(str(path))
  path.write_text('{"source": "a", "target": "b"}\n{"source": 1, "target": "b"}\n')
  with pytest.raises(ValueError, match=r"line 2 of .*'source' must be a string"):
    read_jsonl(str(path))
  path.write_text('{"source": "a", "target": "b"}\nnot json\n')
  with pytest.raises(ValueError, match=r"line 2 of .*invalid JSON"):
    read_jsonl(str(path))


def test_row_layout():
  tok = ByteTokenizer()
  rows, stats = encode_rows(tok, [{"source": "abc", "target": "xy"},
                                  {"source": "abcdefgh", "target": "z" * 9}], 6, 5)
  np.testing.assert_array_equal(rows["source"][0], [97, 98, 99, tok.pad_id, tok.pad_id,
                                                    tok.pad_id])
  np.testing.assert_array_equal(rows["source_valid"][0], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows["inputs"][0, :3], [DECODER_START_ID, 120, 121])
  np.testing.assert_array_equal(rows["targets"][0, :3], [120, 121, tok.eos_id])
  np.testing.assert_array_equal(rows["weights"][0], [1, 1, 1, 0, 0])
  assert stats["truncated_sources"] == 1 and stats["truncated_targets"] == 1
  assert rows["source_valid"][1].sum() == 6 and rows["weights"][1].sum() == 5
  ds = Seq2SeqDataset(rows)
  batch = ds.batch(0, 3, 2)
  assert {k: v.shape for k, v in batch.items()} == {
      "source": (2, 6), "source_valid": (2, 6), "inputs": (2, 5), "targets": (2, 5),
      "weights": (2, 5)}
  with pytest.raises(ValueError, match="lower --config.train.batch_size"):
    ds.batch(0, 0, 3)
  assert len(ds.eval_batches(4)) == 1  # a split smaller than a batch is padded


CONFIG = build_config("experiments/seq2seq.py:tiny", [
    ("model.n_layers", "2"), ("model.n_kv_heads", "1"), ("data.seq_len", "24"),
    ("data.source_len", "32"), ("model.max_len", "32")])


def _batch(n=8):
  train, _, _ = embedded_rows(n, 1, seed=0)
  rows, _ = encode_rows(ByteTokenizer(), train, 32, 24)
  return rows


def _mesh(**shape):
  n = int(np.prod(list(shape.values()))) if shape else 1
  return sharding.make_mesh({"data": 1, **shape}, jax.devices()[:n])


@pytest.fixture(scope="module")
def single():
  trainer = Trainer(CONFIG, _mesh())
  state, frozen = trainer.init(0)
  batch = _batch()
  losses = []
  for _ in range(2):
    state, metrics = trainer.train_step(state, frozen, trainer.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return trainer, losses, jax.device_get(state.params)


def test_loss_counts_only_target_tokens(single):
  trainer = single[0]
  state, frozen = trainer.init(0)
  batch = _batch()
  loss_sum, weight_sum, _ = trainer.eval_step(state.params, frozen, trainer.global_batch(batch))
  assert float(weight_sum) == batch["weights"].sum()
  changed = dict(batch, targets=np.where(batch["weights"] > 0, batch["targets"], 7),
                 source=np.where(batch["source_valid"] > 0, batch["source"], 9))
  again = trainer.eval_step(state.params, frozen, trainer.global_batch(changed))
  np.testing.assert_allclose(float(again[0]), float(loss_sum), rtol=1e-6)
  assert 0.9 * np.log(264) < float(loss_sum / weight_sum) < 1.1 * np.log(264)


def test_sharded_train_steps_match_single_device(single):
  _, want_losses, want_params = single
  trainer = Trainer(CONFIG, _mesh(fsdp=2, tensor=2, data=2))
  state, frozen = trainer.init(0)
  losses = []
  for _ in range(2):
    state, metrics = trainer.train_step(state, frozen, trainer.global_batch(_batch()))
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  sharded = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
  assert any(any(a is not None for a in spec) for spec in sharded), "nothing was sharded"
  for got, want in zip(jax.tree.leaves(jax.device_get(state.params)),
                       jax.tree.leaves(want_params)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_objective_refuses_wrong_setup():
  with pytest.raises(ValueError, match="arch=encoder_decoder"):
    Trainer(dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model,
                                                                  arch="decoder")), _mesh())


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, steps=4,
                                                                 eval_every=0))
  train(config, str(tmp_path / "straight"))
  assert train(config, str(tmp_path / "split"), stop_at_step=2)["stopped_early"]
  assert train(config, str(tmp_path / "split"))["start_step"] == 2
  a, b = (load_model(str(tmp_path / name)) for name in ("straight", "split"))
  assert a.step == b.step == 4
  for x, y in zip(jax.tree.leaves(jax.device_get(a.params)),
                  jax.tree.leaves(jax.device_get(b.params))):
    np.testing.assert_array_equal(x, y)
  with open(tmp_path / "split" / "data.json") as f:
    assert json.load(f)["kind"] == "seq2seq"


def test_span_corruption_round_trips_and_rates():
  from train.data import span_corruption  # pylint: disable=g-import-not-at-top
  tok = span_corruption.with_sentinels(ByteTokenizer(), 8)
  assert tok.vocab_size == 267 and tok.sentinel_ids == list(range(259, 267))
  assert tok.fingerprint == ByteTokenizer().fingerprint  # the saved tokenizer is unchanged
  rng = np.random.default_rng(0)
  noise = []
  for trial in range(200):
    tokens = rng.integers(0, 256, 100)
    src, tgt = span_corruption.corrupt(np.random.default_rng(trial), tokens, tok.sentinel_ids,
                                       tok.eos_id, 0.15, 3.0)
    assert tgt[-1] == tok.eos_id
    # Filling every sentinel of the source with its span from the target restores the text.
    spans, current = {}, None
    for t in tgt[:-1]:
      if t in tok.sentinel_ids:
        current = t
        spans[t] = []
      else:
        spans[current].append(t)
    restored = [x for t in src for x in (spans[t] if t in spans else [t])]
    assert restored == tokens.tolist()
    assert all(len(s) >= 1 for s in spans.values())
    noise.append(sum(len(s) for s in spans.values()) / 100)
  assert abs(np.mean(noise) - 0.15) < 0.01
  assert tgt[0] == tok.sentinel_ids[0]


def test_span_corruption_batches_are_stateless():
  from train.data import span_corruption  # pylint: disable=g-import-not-at-top
  from train.dataset import TokenDataset  # pylint: disable=g-import-not-at-top
  tok = span_corruption.with_sentinels(ByteTokenizer(), 8)
  base = TokenDataset(np.random.default_rng(1).integers(0, 256, 5000), 64)
  ds = span_corruption.SpanCorruptionDataset(base, tok, target_len=32)
  a, b = ds.batch(0, 5, 4), ds.batch(0, 5, 4)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(ds.batch(0, 6, 4)["source"], a["source"])
  assert a["source"].shape == (4, 64) and a["targets"].shape == (4, 32)
  assert a["inputs"][0, 0] == DECODER_START_ID and a["targets"][0, 0] == 259
  np.testing.assert_array_equal(a["inputs"][:, 1:], np.where(a["weights"][:, 1:] > 0,
                                                             a["targets"][:, :-1],
                                                             a["inputs"][:, 1:]))


def test_lora_reaches_cross_attention():
  from model.peft import PeftConfig  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(CONFIG, peft=PeftConfig(method="lora", rank=2,
                                                       targets="attention"))
  trainer = Trainer(config, _mesh())
  state, frozen = trainer.init(0)
  paths = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
  assert paths and all("lora_" in p for p in paths)
  assert any("cross_attn/query" in p for p in paths) and any("encoder/" in p for p in paths)
  state, metrics = trainer.train_step(state, frozen, trainer.global_batch(_batch()))
  assert np.isfinite(float(metrics["loss"]))
