"""Logit distillation (train/objectives/distill.py): divergences against float64 numpy,
temperature scaling, masking, and the objective with a teacher loaded from a run dir."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding, store
from model.config import ModelConfig
from model.tokenizer import ByteTokenizer
from model.transformer import Transformer
from train.config import Config, DistillConfig, TrainConfig
from train.objectives import distill

MODEL = ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, max_len=64)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(lp_a, lp_b):
  return (np.exp(lp_a) * (lp_a - lp_b)).sum(-1)


@pytest.fixture(scope="module")
def logits():
  s = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 2
  t = jax.random.normal(jax.random.key(1), (2, 5, 11)) * 2
  return s, t


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_teacher_and_student_give_zero(logits, kind):
  s, _ = logits
  np.testing.assert_allclose(np.asarray(distill.divergence(s, s, kind, 2.0)), 0, atol=1e-6)


def test_forward_and_reverse_kl_match_float64_reference(logits):
  s, t = logits
  lp_s, lp_t = _np_log_softmax(s), _np_log_softmax(t)
  np.testing.assert_allclose(np.asarray(distill.divergence(s, t, "forward_kl")),
                             _np_kl(lp_t, lp_s), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(distill.divergence(s, t, "reverse_kl")),
                             _np_kl(lp_s, lp_t), rtol=1e-5, atol=1e-6)


def test_jsd_matches_float64_reference_and_is_bounded(logits):
  s, t = logits
  beta = 0.3
  p_s, p_t = np.exp(_np_log_softmax(s)), np.exp(_np_log_softmax(t))
  m = beta * p_t + (1 - beta) * p_s
  ref = beta * _np_kl(np.log(p_t), np.log(m)) + (1 - beta) * _np_kl(np.log(p_s), np.log(m))
  got = np.asarray(distill.divergence(s, t, "jsd", beta=beta))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  assert (got >= 0).all() and (got <= np.log(2) + 1e-6).all()


def test_temperature_softens_and_scales_by_t_squared(logits):
  s, t = logits
  temp = 3.0
  lp_s, lp_t = _np_log_softmax(np.asarray(s) / temp), _np_log_softmax(np.asarray(t) / temp)
  np.testing.assert_allclose(np.asarray(distill.divergence(s, t, "forward_kl", temp)),
                             temp ** 2 * _np_kl(lp_t, lp_s), rtol=1e-5, atol=1e-6)
  # Logits scaled by T at temperature T: exactly T^2 times the T = 1 divergence.
  np.testing.assert_allclose(np.asarray(distill.divergence(s * temp, t * temp, "jsd", temp)),
                             temp ** 2 * np.asarray(distill.divergence(s, t, "jsd")),
                             rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A run dir with a random tiny teacher (params only) and the byte tokenizer."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  teacher_model = dataclasses.replace(MODEL, d_model=48, n_heads=3)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(Transformer(teacher_model).init(jax.random.key(7), tokens)["params"])
  params = jax.tree.map(lambda p: p * 5, params)  # a peaked, opinionated teacher
  store.write_run_config(workdir, {"model": dataclasses.asdict(teacher_model)})
  ByteTokenizer().save(os.path.join(workdir, store.TOKENIZER_DIR))
  manager = store.checkpoint_manager(workdir, async_save=False)
  store.save_checkpoint(manager, 1, params, force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture(scope="module")
def objective(teacher_run):
  config = Config(model=MODEL, train=TrainConfig(objective="distill"),
                  distill=DistillConfig(teacher=teacher_run, temperature=2.0, kd_weight=1.0))
  student = Transformer(MODEL)
  loss = distill.make(student, config)
  mesh = sharding.make_mesh({"data": -1})
  frozen = loss.load_frozen(mesh)
  params = nn.unbox(student.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return jax.jit(loss), params, frozen


def _batch(weights):
  inputs = jax.random.randint(jax.random.key(3), (2, 12), 0, 256)
  return {"inputs": inputs, "targets": jnp.roll(inputs, -1, axis=1),
          "weights": jnp.asarray(weights, jnp.float32)}


def test_objective_loads_the_teacher_and_masks_positions(objective):
  loss, params, frozen = objective
  assert set(frozen) == {"teacher"}
  weights = np.ones((2, 12))
  weights[:, :5] = 0  # a prompt
  weights[1, 9:] = 0  # padding
  batch = _batch(weights)
  total, weight_sum, metrics = loss(params, frozen, batch, jax.random.key(0))
  assert float(weight_sum) == weights.sum()
  assert float(total) > 0 and np.isclose(float(total), float(metrics["kd_loss"]))
  # Masked inputs after the last weighted position cannot change the loss (causal), and
  # masked targets never count: changing them leaves the sums unchanged.
  changed = dict(batch, targets=batch["targets"].at[:, :5].set(3).at[1, 9:].set(4),
                 inputs=batch["inputs"].at[1, 10:].set(5))
  total2, _, metrics2 = loss(params, frozen, changed, jax.random.key(0))
  np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)
  np.testing.assert_allclose(float(metrics2["ce_loss"]), float(metrics["ce_loss"]), rtol=1e-6)
  # All weight on one position: the sum is that position's divergence.
  one = np.zeros((2, 12))
  one[0, 7] = 1
  t_one, w_one, _ = loss(params, frozen, _batch(one), jax.random.key(0))
  assert float(w_one) == 1 and 0 < float(t_one) < float(total)


def test_student_equal_to_teacher_has_zero_kd(objective, teacher_run):
  """The teacher as its own student (kd_weight = 1: the loss is the divergence alone)."""
  _, _, frozen = objective
  model = Transformer(dataclasses.replace(MODEL, d_model=48, n_heads=3))
  config = Config(model=model.config, train=TrainConfig(objective="distill"),
                  distill=DistillConfig(teacher=teacher_run, kd_weight=1.0))
  self_loss = jax.jit(distill.make(model, config))
  total, _, _ = self_loss(frozen["teacher"], frozen, _batch(np.ones((2, 12))),
                          jax.random.key(0))
  assert abs(float(total)) < 1e-4


def test_on_policy_is_the_divergence_alone(objective, teacher_run):
  """On the student's own samples there are no labels: the loss ignores cross-entropy."""
  _, params, frozen = objective
  config = Config(model=MODEL, train=TrainConfig(objective="distill"),
                  distill=DistillConfig(teacher=teacher_run, method="on_policy",
                                        kd_weight=0.1))
  config = distill.adapt_config(config)
  loss = jax.jit(distill.make(Transformer(MODEL), config))
  total, _, metrics = loss(params, frozen, _batch(np.ones((2, 12))), jax.random.key(0))
  np.testing.assert_allclose(float(total), float(metrics["kd_loss"]), rtol=1e-6)
  assert float(metrics["ce_loss"]) > float(total)


def test_errors_name_the_fix(teacher_run):
  with pytest.raises(ValueError, match="--config.distill.teacher"):
    distill.make(Transformer(MODEL), Config(model=MODEL,
                                            train=TrainConfig(objective="distill")))
  data_loss = distill.make(Transformer(MODEL), Config(  # the teacher's text is in the data
      model=MODEL, train=TrainConfig(objective="distill"),
      distill=DistillConfig(teacher=teacher_run, method="data")))
  assert not hasattr(data_loss, "load_frozen")
  on_policy = Config(model=MODEL, train=TrainConfig(objective="distill"),
                     distill=DistillConfig(teacher=teacher_run, method="on_policy"))
  with pytest.raises(ValueError, match="data.kind=rollout"):
    distill.make(Transformer(MODEL), on_policy)
  assert distill.adapt_config(on_policy).data.kind == "rollout"
  with pytest.raises(FileNotFoundError, match="distill.teacher"):
    distill.teacher_tokenizer(Config(distill=DistillConfig(teacher=teacher_run + "_missing")))

  class OtherTokenizer:
    fingerprint = "different"
  config = Config(model=MODEL, distill=DistillConfig(teacher=teacher_run))
  with pytest.raises(ValueError, match="tokenizer mismatch"):
    distill.teacher_tokenizer(config, OtherTokenizer())
  assert distill.teacher_tokenizer(config).fingerprint == ByteTokenizer().fingerprint


def test_mixed_dataset_draws_synthetic_rows_by_the_mixing_ratio():
  from train.data.teacher_text import MixedDataset
  from train.dataset import TokenDataset
  real = TokenDataset(np.arange(4000) % 200, 8, name="train")
  fake = TokenDataset(np.full(800, 250), 8, name="synthetic")
  mixed = MixedDataset(real, fake, 0.25)
  rows = np.concatenate([mixed.batch(0, step, 16)["inputs"] for step in range(50)])
  synthetic = (rows == 250).all(axis=1)
  assert 0.17 < synthetic.mean() < 0.33
  np.testing.assert_array_equal(mixed.batch(0, 3, 16)["inputs"], mixed.batch(0, 3, 16)["inputs"])
  halves = [mixed.batch(0, 3, 16, p, 2)["inputs"] for p in range(2)]  # two processes
  np.testing.assert_array_equal(np.concatenate(halves), mixed.batch(0, 3, 16)["inputs"])
  assert not (MixedDataset(real, fake, 0.0).batch(0, 1, 16)["inputs"] == 250).any()
