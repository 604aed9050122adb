"""Encoder training: 8 simulated devices == 1 device (MLM and classifier); resume bit-exact."""

import dataclasses

import jax
import numpy as np
import pytest

from model import sharding
from model.config import ModelConfig
from model.tokenizer import ByteTokenizer
from train.config import ClassifyConfig, Config, DataConfig, MlmConfig, TrainConfig
from train.data.mlm import MlmDataset
from train.dataset import TokenDataset
from train.step import Trainer

MODEL = ModelConfig(arch="encoder", vocab_size=264, d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=2, max_len=16)
MLM = Config(model=MODEL, data=DataConfig(kind="mlm", seq_len=16),
             train=TrainConfig(objective="mlm", batch_size=8, learning_rate=1e-2,
                               warmup_steps=1))
CLS = dataclasses.replace(MLM, head="classify", classify=ClassifyConfig(n_labels=3),
                          data=DataConfig(kind="labelled", seq_len=16),
                          train=dataclasses.replace(MLM.train, objective="classify"))


def _mesh(**shape):
  n = int(np.prod(list(shape.values()))) if shape else 1
  return sharding.make_mesh({"data": 1, **shape}, jax.devices()[:n])


def _mlm_batch(step):
  ds = MlmDataset(TokenDataset(np.arange(3000) * 7 % 255, 16), ByteTokenizer(mask=True),
                  MlmConfig())
  return ds.batch(0, step, 8)


def _cls_batch(step):
  rng = np.random.default_rng(step)
  seg = np.ones((8, 16), np.int32)
  seg[::2, 10:] = 0
  return {"inputs": rng.integers(0, 255, (8, 16)).astype(np.int32), "segment_ids": seg,
          "labels": rng.integers(0, 3, (8, 1)).astype(np.int32),
          "label_weights": np.ones((8, 1), np.float32)}


def _run(config, mesh, make_batch, steps=2):
  trainer = Trainer(config, mesh)
  state, frozen = trainer.init(0)
  losses = []
  for step in range(steps):
    state, metrics = trainer.train_step(state, frozen, trainer.global_batch(make_batch(step)))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state.params), losses


@pytest.mark.parametrize("config, make_batch", [(MLM, _mlm_batch), (CLS, _cls_batch)],
                         ids=["mlm", "classify"])
def test_sharded_encoder_matches_single_device(config, make_batch):
  want_params, want_losses = _run(config, _mesh(), make_batch)
  got_params, got_losses = _run(config, _mesh(data=2, fsdp=2, tensor=2), make_batch)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
               got_params, want_params)


@pytest.mark.slow
def test_encoder_resume_is_bit_exact(tmp_path):
  from experiments import encoder  # pylint: disable=g-import-not-at-top
  from model import store  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  config = encoder.get_config("tiny")
  config = dataclasses.replace(config, train=dataclasses.replace(
      config.train, steps=4, checkpoint_every=100, eval_every=0))
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  train(config, straight)
  assert train(config, split, stop_at_step=2)["stopped_early"]
  assert train(config, split)["how"] == "resumed"
  abstract = Trainer(config, _mesh()).abstract_params
  a, _, _ = store.restore_params(straight, abstract)
  b, _, _ = store.restore_params(split, abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
