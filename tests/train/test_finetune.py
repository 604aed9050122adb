"""Fine-tuning in-process: init_from, frozen trees, params-only reads, packing, sharding."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.loading import load_model
from model import sharding, store
from model.config import ModelConfig
from model.peft import PeftConfig
from model.transformer import Transformer
from train.config import Config, DataConfig, TrainConfig, build_config
from train.loop import train
from train.step import Trainer


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "def", "return", "(", ")", ":", "\n", "1", "2", "+"]
  path.write_text(" ".join(rng.choice(words, size=30_000)))
  return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, text_file):
  workdir = str(tmp_path_factory.mktemp("runs") / "base")
  config = build_config("experiments/quickstart.py:tiny",
                        [("data.data", str(text_file)), ("model.max_len", "96"),
                         ("train.steps", "4")])
  train(config, workdir)
  return workdir


def _sft(workdir, base, *overrides, steps=4):
  pairs = [("train.init_from", base), ("train.steps", str(steps))] + list(overrides)
  return train(build_config("experiments/sft.py:tiny", pairs), str(workdir))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_run):
  workdir = tmp_path_factory.mktemp("runs") / "lora"
  summary = _sft(workdir, base_run, ("peft.method", "lora"), ("peft.rank", "4"),
                 ("train.learning_rate", "1e-2"))
  return str(workdir), summary


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_lora_trains_only_its_factors_and_the_base_stays_bit_identical(base_run, lora_run):
  workdir, summary = lora_run
  assert summary["how"] == "init_from" and summary["peft"] == "lora"
  base = _leaves(load_model(base_run).params)
  tuned = _leaves(load_model(workdir).params)
  lora_keys = {k for k in tuned if k.rsplit("/", 1)[-1] in ("lora_a", "lora_b")}
  assert lora_keys and set(tuned) - lora_keys == set(base)
  for key, value in base.items():
    np.testing.assert_array_equal(tuned[key], value, err_msg=key)  # bit-identical
  assert any(np.abs(tuned[k]).max() > 0 for k in lora_keys if k.endswith("lora_b"))
  n_lora = sum(tuned[k].size for k in lora_keys)
  assert summary["trainable_params"] == n_lora
  # Adam keeps two moments per trainable scalar, none for the frozen base.
  assert summary["optimizer_state_bytes"] == pytest.approx(2 * 4 * n_lora, rel=0.01)
  assert summary["trainable_params"] < 0.2 * summary["total_params"]
  assert "exact_match" in summary and 0.0 <= summary["exact_match"] <= 1.0


def test_decoding_reads_only_the_params_item(lora_run, tmp_path):
  workdir, _ = lora_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  step = store.checkpoint_steps(str(copy))[-1]
  state_dir = copy / store.CHECKPOINT_DIR / str(step) / store.TRAIN_STATE_ITEM
  params_bytes = store.dir_bytes(str(state_dir.parent / store.PARAMS_ITEM))
  shutil.rmtree(state_dir)  # the optimizer state is gone: decoding must not notice
  loaded = load_model(str(copy))
  reference = load_model(workdir)
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert loaded.bytes_read == params_bytes > 0
  assert loaded.peft.method == "lora" and loaded.chat_template is not None


def test_lora_resume_is_bit_exact(base_run, tmp_path):
  args = [("peft.method", "lora"), ("peft.rank", "4"), ("train.checkpoint_every", "100")]
  straight = _sft(tmp_path / "straight", base_run, *args, steps=4)
  pairs = [("train.init_from", base_run), ("train.steps", "4")] + args
  train(build_config("experiments/sft.py:tiny", pairs), str(tmp_path / "split"), stop_at_step=2)
  resumed = _sft(tmp_path / "split", base_run, *args, steps=4)
  assert resumed["how"] == "resumed" and resumed["start_step"] == 2
  assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
  a = load_model(str(tmp_path / "straight")).params
  b = load_model(str(tmp_path / "split")).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stop_at_step_at_or_below_the_current_step_trains_nothing(lora_run):
  workdir, _ = lora_run
  before = _leaves(load_model(workdir).params)
  steps = store.checkpoint_steps(workdir)
  from train.checkpoint import load_config
  summary = train(load_config(workdir), workdir, stop_at_step=steps[-1])
  assert summary["step"] == steps[-1] and store.checkpoint_steps(workdir) == steps
  after = _leaves(load_model(workdir).params)
  assert all(np.array_equal(after[k], v) for k, v in before.items())


def test_vocabulary_mismatch_is_a_clear_error(base_run, tmp_path):
  from model.tokenizer import SentencePieceTokenizer
  broken = tmp_path / "broken_base"
  shutil.copytree(base_run, broken)
  shutil.rmtree(broken / store.TOKENIZER_DIR)
  docs = [f"word{i} other{i * 7} thing{i % 13}\n" * 3 for i in range(400)]
  SentencePieceTokenizer.train(docs, vocab_size=300, model_type="bpe").save(
      str(broken / store.TOKENIZER_DIR))
  with pytest.raises(ValueError, match="vocabulary mismatch"):
    _sft(tmp_path / "run", str(broken))


def test_init_from_a_missing_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="--init_from"):
    _sft(tmp_path / "run", str(tmp_path / "nowhere"))


# -- the step on trainable / frozen trees, sharded and packed ----------------------------------

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=48)


def _config(method, **peft_kw):
  return Config(model=MODEL, peft=PeftConfig(method=method, **peft_kw),
                data=DataConfig(seq_len=16),
                train=TrainConfig(steps=10, batch_size=8, learning_rate=1e-2, warmup_steps=0,
                                  objective="lm"))


def _batch(step):
  rng = np.random.default_rng(step)
  tokens = rng.integers(0, 64, size=(8, 17)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def _mesh(**shape):
  n = int(np.prod(list(shape.values()))) if shape else 1
  return sharding.make_mesh({"data": 1, **shape}, jax.devices()[:n])


def _run(config, mesh, steps=2):
  trainer = Trainer(config, mesh)
  base = jax.device_get(Transformer(MODEL).init(jax.random.key(3),
                                                jnp.zeros((1, 16), jnp.int32))["params"])
  base = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), nn_unbox(base),
                      trainer.abstract_base_params)
  state, frozen = trainer.init_from(base, seed=0)
  for step in range(steps):
    state, _ = trainer.train_step(state, frozen, trainer.global_batch(_batch(step)))
  return jax.device_get(state.params), jax.device_get(frozen), trainer


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)


@pytest.mark.parametrize("method,kw", [("lora", dict(rank=4, targets="attention_mlp")),
                                       ("adapters", dict(adapter_dim=8)),
                                       ("prompt_tuning", dict(prompt_length=4))])
def test_peft_training_on_8_devices_equals_one_device(method, kw):
  config = _config(method, **kw)
  ref_params, ref_frozen, trainer = _run(config, _mesh())
  params, frozen, sharded = _run(config, _mesh(data=2, fsdp=2, tensor=2))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(ref_frozen)):
    np.testing.assert_array_equal(a, b)
  n_trainable = sum(x.size for x in jax.tree.leaves(params))
  n_total = n_trainable + sum(x.size for x in jax.tree.leaves(frozen))
  assert 0 < n_trainable < 0.25 * n_total
  if method == "lora":  # factors of a tensor-sharded kernel are sharded with it
    specs = {str(s.spec) for s in jax.tree.leaves(sharded.state_shardings.params)}
    assert any("tensor" in s for s in specs), specs


def test_packed_rows_give_the_same_loss_and_gradients_as_examples_one_by_one():
  """Two examples packed in one row (segment ids, restarting positions) versus each in its
  own padded row: equal loss sums, weights and gradients."""
  config = dataclasses.replace(_config("full"), data=DataConfig(seq_len=12))
  trainer = Trainer(config, _mesh())
  state, frozen = trainer.init(0)
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 64, size=6), rng.integers(1, 64, size=7)
  packed = {"inputs": np.zeros((1, 12), np.int32), "targets": np.zeros((1, 12), np.int32),
            "weights": np.zeros((1, 12), np.float32), "segment_ids": np.zeros((1, 12), np.int32),
            "positions": np.zeros((1, 12), np.int32)}
  alone = {k: np.zeros((2, 12), v.dtype) for k, v in packed.items()}
  offset = 0
  for row, ex in enumerate((a, b)):
    n = len(ex) - 1
    sl = slice(offset, offset + n)
    packed["inputs"][0, sl], packed["targets"][0, sl] = ex[:-1], ex[1:]
    packed["weights"][0, sl], packed["segment_ids"][0, sl] = 1.0, row + 1
    packed["positions"][0, sl] = np.arange(n)
    alone["inputs"][row, :n], alone["targets"][row, :n] = ex[:-1], ex[1:]
    alone["weights"][row, :n], alone["segment_ids"][row, :n] = 1.0, 1
    alone["positions"][row, :n] = np.arange(n)
    offset += n

  def loss_and_grad(batch):
    batch = jax.tree.map(jnp.asarray, batch)

    def loss(params):
      loss_sum, weight_sum, _ = trainer.objective(params, frozen, batch, jax.random.key(0),
                                                  train=False)
      return loss_sum, weight_sum

    (loss_sum, weight_sum), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return float(loss_sum), float(weight_sum), grads

  loss_p, w_p, g_p = loss_and_grad(packed)
  loss_a, w_a, g_a = loss_and_grad(alone)
  assert w_p == w_a == len(a) - 1 + len(b) - 1
  assert loss_p == pytest.approx(loss_a, rel=1e-5)
  for x, y in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_a)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=1e-4)


def test_a_user_eval_set_is_scored_during_training(base_run, tmp_path):
  """--config.train.eval_set: every eval_every steps and at the end, in metrics.jsonl."""
  import json
  rows = [{"id": f"r{i}", "input": f"What is {i} + 1?", "reference": str(i + 1),
           "slice": "small" if i < 3 else "large"} for i in range(6)]
  path = tmp_path / "eval.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  summary = _sft(tmp_path / "run", base_run, ("train.eval_set", str(path)),
                 ("train.eval_set_metrics", "exact,f1,chrf"))
  assert 0.0 <= summary["eval_set/exact"] <= 1.0 and "eval_set/chrf" in summary
  assert "eval_set/slice=small/exact" in summary  # slices named as infer.evaluate names them
  records = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert any("eval_set/f1" in r for r in records if not r.get("final"))
  with pytest.raises(ValueError, match="bogus"):
    _sft(tmp_path / "bad", base_run, ("train.eval_set", str(path)),
         ("train.eval_set_metrics", "exact,bogus"))
