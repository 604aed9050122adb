"""Reward model: Bradley-Terry loss and accuracy by hand, the scalar head, learning a
separable preference, and infer/reward.py scoring exactly as training does."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.reward import RewardScorer
from model import sharding, store
from model.chat import get_template
from model.reward_head import RewardModel, last_index
from model.tokenizer import ByteTokenizer
from train import checkpoint
from train.config import build_config
from train.data.preference import PreferenceDataset, encode_pairs, normalize_pair
from train.objectives.reward import bradley_terry
from train.step import Trainer

TOKENIZER = ByteTokenizer()
TEMPLATE = get_template("qa")


def test_bradley_terry_loss_and_accuracy_by_hand():
  chosen, rejected = jnp.array([2.0, 0.0, -1.0]), jnp.array([1.0, 0.0, 1.0])
  loss, correct = bradley_terry(chosen, rejected)
  expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(2.0))]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_array_equal(correct, [1.0, 0.0, 0.0])  # a tie is not a win
  margin_loss, _ = bradley_terry(chosen, rejected, 1.0)
  np.testing.assert_allclose(margin_loss[0], math.log(2.0), rtol=1e-6)


def test_the_head_reads_the_last_reply_token_and_ignores_padding():
  config = build_config("experiments/reward.py:tiny", []).model
  model = RewardModel(config)
  apply = jax.jit(model.apply)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  assert float(jnp.abs(apply({"params": params}, jnp.ones((2, 8), jnp.int32))[0]).max()) == 0
  params = dict(params)
  params["reward_head"] = {"kernel": jnp.ones_like(params["reward_head"]["kernel"]),
                           "bias": params["reward_head"]["bias"]}
  tokens = jnp.array([[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 99, 42]], jnp.int32)
  rewards, _ = apply({"params": params}, tokens, jnp.array([3, 3]))
  np.testing.assert_allclose(rewards[0], rewards[1], rtol=1e-6)  # what follows is unseen
  weights = jnp.array([[0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 1.0]])
  np.testing.assert_array_equal(last_index(weights), [3, 5])


def _pairs(split_words):
  return [normalize_pair({"prompt": f"Shout {w}", "chosen": w.upper(), "rejected": w})
          for w in split_words]


def _words(rng, n):
  letters = np.array(list("bdfgklmnprstvzaeiou"))
  return ["".join(rng.choice(letters, size=5)) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  config = build_config("experiments/reward.py:tiny",
                        [("train.learning_rate", "1e-2"), ("train.warmup_steps", "0"),
                         ("train.batch_size", "16"), ("data.seq_len", "32")])
  trainer = Trainer(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  words = _words(np.random.default_rng(0), 400)
  train_rows, _ = encode_pairs(TOKENIZER, TEMPLATE, _pairs(words[:320]), 32)
  held_rows, _ = encode_pairs(TOKENIZER, TEMPLATE, _pairs(words[320:]), 32)
  train_ds, held_ds = PreferenceDataset(train_rows), PreferenceDataset(held_rows, "heldout")
  state, frozen = trainer.init(0)
  for step in range(40):
    state, metrics = trainer.train_step(state, frozen, train_ds.batch(0, step, 16))
  params = trainer.full_params(state, frozen)
  # Save it as a run directory, as the loop does, for infer/reward.py.
  workdir = str(tmp_path_factory.mktemp("rm"))
  checkpoint.save_config(workdir, config)
  TOKENIZER.save(f"{workdir}/{store.TOKENIZER_DIR}")
  store.write_chat_template(workdir, TEMPLATE.to_dict())
  manager = store.checkpoint_manager(workdir)
  store.save_checkpoint(manager, 40, params)
  manager.wait_until_finished()
  manager.close()
  return trainer, state, frozen, held_ds, words[320:], workdir


def test_reward_model_separates_held_out_pairs(trained):
  trainer, state, frozen, held_ds, _, _ = trained
  correct = n = 0.0
  for batch in held_ds.eval_batches(16):
    _, weight, metrics = trainer.eval_step(state.params, frozen, batch)
    correct += float(metrics["reward_accuracy"])
    n += float(weight)
  assert n == 80 and correct / n > 0.95


def test_scorer_reads_the_run_and_scores_like_training(trained):
  trainer, state, frozen, held_ds, words, workdir = trained
  scorer = RewardScorer(workdir, mesh=trainer.mesh)
  got = scorer.score([f"Shout {w}" for w in words[:4]] * 2,
                     [w.upper() for w in words[:4]] + words[:4])
  batch = held_ds.eval_batches(16)[0]
  params = trainer.full_params(state, frozen)
  want = []
  for side in ("chosen", "rejected"):
    rewards, _ = jax.jit(trainer.model.apply)({"params": params}, batch[f"{side}_inputs"][:4],
                                              last_index(batch[f"{side}_weights"][:4]))
    want.extend(np.asarray(rewards))
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert all(c > r for c, r in zip(got[:4], got[4:]))
  policy_scorer = scorer.best_of_n_scorer(TOKENIZER, TEMPLATE)
  prompt_ids = [TOKENIZER.bos_id] + TOKENIZER.encode(TEMPLATE.render_prompt(
      [{"role": "user", "content": f"Shout {words[0]}"}]))
  sample = TOKENIZER.encode(words[0].upper() + TEMPLATE.turn_suffix + "junk") + [TOKENIZER.eos_id]
  np.testing.assert_allclose(policy_scorer(prompt_ids, sample, []), got[0], atol=1e-4)


def test_a_language_model_run_is_refused_as_a_scorer(tmp_path):
  config = build_config("experiments/sft.py:tiny", [])
  checkpoint.save_config(str(tmp_path), config)
  with pytest.raises(ValueError, match="not a reward model.*experiments/reward.py"):
    RewardScorer(str(tmp_path))
