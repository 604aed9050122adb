"""Multi-process rollouts, simulated in one process: each process samples only its share of
the rollout's prompts (whole groups), the shares are gathered in process order, and every
process ends with the same whole rollout (advantages over all of it) and its own rows of
each minibatch. One process: the decoder runs on the trainer's mesh and nothing is gathered.
(The cross-process gather is jax's process_allgather, replaced here by a concatenation.)"""

import numpy as np
import pytest
from jax.experimental import multihost_utils

from model import sharding
from model.chat import get_template
from model.tokenizer import ByteTokenizer
from train.config import build_config
from train.data import tasks as tasks_lib
from train.rl.rollout import RolloutDataset, assemble_rows, process_share
from train.step import Trainer


def test_process_shares_are_whole_groups_in_order():
  for n, count in ((8, 1), (8, 2), (8, 4), (6, 3)):
    shares = [np.arange(n)[process_share(n, p, count)] for p in range(count)]
    assert all(len(s) == n // count for s in shares)
    np.testing.assert_array_equal(np.concatenate(shares), np.arange(n))
  with pytest.raises(ValueError, match="multiple of the process count"):
    process_share(6, 0, 4)
  local = {"inputs": np.arange(6).reshape(3, 2)}
  assert assemble_rows(local, 1) is local  # one process: nothing gathered


@pytest.fixture(scope="module")
def setup():
  config = build_config("experiments/grpo.py:tiny", [("rl.max_new_tokens", "6")])
  trainer = Trainer(config, sharding.make_mesh({"data": 8}))  # 8 simulated devices
  state, frozen = trainer.init(0)
  data = RolloutDataset(tasks_lib.mixture("train", 4, 0, ("arithmetic", "case")),
                        ByteTokenizer(), get_template("qa"), config.rl, config.data.seq_len)
  data.set_policy(trainer, state, frozen)
  return trainer, state, frozen, data


def test_one_process_samples_everything_on_the_trainer_mesh(setup):
  trainer, state, frozen, data = setup
  assert data.decoder.mesh is trainer.mesh
  n = 4  # prompts: 4 x G=4 = 16 rows
  whole = data.rollout(0, 0, n)
  chosen = data._prompt_order(0, 0, n)  # pylint: disable=protected-access
  direct = data.sample_share(0, 0, chosen)
  for k in direct:
    np.testing.assert_array_equal(whole[k], direct[k])
  assert whole["advantages"].shape == (16, 1)


def test_two_processes_sample_halves_and_hold_the_same_rollout(setup, monkeypatch):
  _, _, _, data = setup
  n, count, g = 4, 2, data.rl.group_size
  chosen = data._prompt_order(0, 1, n)  # pylint: disable=protected-access
  shares = [data.sample_share(0, 1, chosen[process_share(n, p, count)], p, count)
            for p in range(count)]
  assert all(len(s["inputs"]) == n * g // count for s in shares)  # half the sampling each
  current = {}

  def fake_allgather(tree, tiled=False):
    assert tiled
    mine = shares[current["p"]]
    for k in mine:  # a process contributes its own share, sampled with its own seed
      np.testing.assert_array_equal(tree[k], mine[k])
    return {k: np.concatenate([s[k] for s in shares]) for k in mine}

  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  rollouts = []
  for p in range(count):
    current["p"] = p
    rollouts.append(data.rollout(0, 1, n, p, count))
  for k in rollouts[0]:
    np.testing.assert_array_equal(rollouts[0][k], rollouts[1][k])
  whole = rollouts[0]
  # Rows are the prompts in the single-process order, G samples each, groups intact.
  prompts = [data.prompt_ids[i] for i in chosen for _ in range(g)]
  for row, prompt in enumerate(prompts):
    np.testing.assert_array_equal(whole["inputs"][row, :len(prompt)], prompt)
  # Group advantages over the gathered rollout: each group sums to 0.
  np.testing.assert_allclose(whole["advantages"].reshape(-1, g).sum(axis=1), 0.0, atol=1e-5)
  # The processes' seeds differ: the halves are not copies of one sample.
  assert not np.array_equal(shares[0]["old_logp"], shares[1]["old_logp"])
  # batch() hands each process its half of the minibatch, together the whole of it.
  data._cache = (None, None)  # pylint: disable=protected-access
  halves = []
  for p in range(count):
    current["p"] = p
    data._cache = (None, None)  # pylint: disable=protected-access
    halves.append(data.batch(0, 1, n * g, p, count))
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
