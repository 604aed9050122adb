"""On-policy rollouts as a dataset: G samples per prompt from the current policy, rewarded.

The loop hands the dataset the current policy before every step (`set_policy`); then
`batch(seed, step, batch_size, ...)` draws batch_size / G prompts (an epoch order seeded by
`seed`, like every dataset here), samples G replies each with the project's jitted decoder
(infer.decode.Decoder, seeded by (seed, step)), scores them (the task's checker
`tasks.score`, or a reward-model run via infer/reward.py) and returns rows for the grpo
objective: inputs, targets, weights (the reply tokens up to and including eos; 0 on the
prompt and on padding after eos), old_logp (the sampler's log-prob of each reply token,
temperature-free), advantages and rewards ([B, 1]: group-relative, and raw).
With rl.updates_per_rollout = k the same rollout serves k consecutive steps (the ratio
then moves away from 1 and the clip matters). Batches are a pure function of (seed, step)
and the parameters the loop passed in.

Resume: the rollout in use was sampled from parameters that are gone a step later, so it
is checkpointed with the train state (`checkpoint_state` / `restore_checkpoint_state`, the
"rl" entry of the train_state item): a resumed run continues the same rollout bit for bit.
Multi-process: each process samples and scores only its share of the rollout's prompts
(`process_share`, whole groups, on a mesh of its own devices), then the shares are
gathered in process order (`assemble_rows`), so every process holds the same rollout.
"""

import hashlib
import json

import jax
import numpy as np
from absl import logging

from infer import sampling
from infer.decode import Decoder
from model import sharding
from model.chat import encode_prompt
from train.data import sft
from train.data import tasks as tasks_lib
from train.objectives.grpo import group_advantages

ROW_KEYS = ("inputs", "targets", "weights", "old_logp", "advantages", "rewards")


def process_share(n_prompts: int, process_index: int, process_count: int) -> slice:
  """The prompts (of a rollout's n_prompts, in order) that process `process_index` samples."""
  if n_prompts % process_count:
    raise ValueError(f"a rollout of {n_prompts} prompts does not split over {process_count} "
                     "processes; make train.batch_size * rl.minibatches / rl.group_size a "
                     "multiple of the process count")
  per = n_prompts // process_count
  return slice(process_index * per, (process_index + 1) * per)


def assemble_rows(local: dict, process_count: int) -> dict:
  """Every process's share of the rollout -> the whole rollout, in process order, on every
  process (a global array gathered across processes); one process: `local` itself."""
  if process_count == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(local, tiled=True)
  return {k: np.asarray(v) for k, v in gathered.items()}


def _local_mesh(mesh):
  """Rollouts run on this process's devices when there are several processes."""
  if jax.process_count() == 1:
    return mesh
  return sharding.make_mesh({"data": -1}, jax.local_devices())


def _to_local(params, mesh):
  """The global parameters, whole, replicated on this process's devices (multi-process)."""
  if jax.process_count() == 1:
    return params
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.device_put(multihost_utils.process_allgather(params, tiled=True), replicated)


class RolloutDataset:
  """Prompts (rows with a task and an answer) -> rewarded on-policy samples."""

  def __init__(self, rows, tokenizer, template, rl, seq_len: int, name: str = "rollout"):
    self.tokenizer, self.template, self.rl, self.seq_len, self.name = (
        tokenizer, template, rl, seq_len, name)
    self.prompt_rows, self.prompt_ids = [], []
    for row in rows:
      ids = encode_prompt(tokenizer, template, sft.row_messages(row)[:-1])
      if len(ids) + rl.max_new_tokens - 1 <= seq_len:
        self.prompt_rows.append(row)
        self.prompt_ids.append(ids)
    if len(self.prompt_rows) < len(rows):
      logging.warning("%d of %d RL prompts do not leave rl.max_new_tokens=%d within seq_len=%d: "
                      "dropped (raise --config.data.seq_len)", len(rows) - len(self.prompt_rows),
                      len(rows), rl.max_new_tokens, seq_len)
    if not self.prompt_rows:
      raise ValueError(f"no RL prompt fits seq_len={seq_len} with rl.max_new_tokens="
                       f"{rl.max_new_tokens}; raise --config.data.seq_len")
    self.n_windows = len(self.prompt_rows)
    self.checksum = hashlib.sha256(json.dumps(self.prompt_ids).encode()).hexdigest()[:32]
    self.tokens_per_epoch = float("inf")  # fresh samples every step: nothing repeats
    self.decoder = None
    self.params = None
    self.reward_model = None
    self.last_stats = {}
    self._cache = (None, None)

  def set_policy(self, trainer, state, frozen) -> None:
    """The policy to sample from (the loop calls this before every step)."""
    self.trainer, self.state, self.frozen = trainer, state, frozen
    params = trainer.full_params(state, frozen)
    if self.decoder is None:
      mesh = _local_mesh(trainer.mesh)
      self.decoder = Decoder(trainer.config.model, mesh, trainer.config.peft,
                             trainer.config.model_quant)
      if self.rl.reward == "model":
        from infer.reward import RewardScorer  # pylint: disable=g-import-not-at-top
        self.reward_model = RewardScorer(self.rl.reward_model, mesh=mesh)
    self.params = params

  def _prompt_order(self, seed: int, index: int, n: int) -> np.ndarray:
    items = index * n + np.arange(n)
    epochs, positions = np.divmod(items, self.n_windows)
    out = np.empty_like(items)
    for epoch in np.unique(epochs):
      perm = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), 5, int(epoch)]))
      out[epochs == epoch] = perm.permutation(self.n_windows)[positions[epochs == epoch]]
    return out

  def rewards(self, rows, prompt_ids, completions) -> np.ndarray:
    """One reward per sample: the task checker on the cut reply, or the reward model."""
    replies = []
    for tokens in completions:
      if tokens and tokens[-1] == self.tokenizer.eos_id:
        tokens = tokens[:-1]
      replies.append(self.template.cut_reply(self.tokenizer.decode(tokens)))
    if self.reward_model is not None:
      return self.reward_model.score_tokens(
          [self.reward_model.reply_tokens(p, r) for p, r in zip(prompt_ids, replies)])
    return np.asarray([tasks_lib.score(row.get("task", "data"), reply,
                                       sft.reference_answer(row))
                       for row, reply in zip(rows, replies)], np.float32)

  def sample_share(self, seed: int, index: int, chosen, process_index: int = 0,
                   process_count: int = 1) -> dict:
    """Rows of the prompts `chosen` (G samples each), sampled and scored here: inputs,
    targets, weights, old_logp [n, L] and rewards [n, 1]."""
    g = self.rl.group_size
    rows = [self.prompt_rows[i] for i in chosen for _ in range(g)]
    prompts = [self.prompt_ids[i] for i in chosen for _ in range(g)]
    method = "random" if self.rl.temperature == 1.0 else "temperature"
    params_sampling = sampling.make_sampling_params(len(prompts), method,
                                                    temperature=self.rl.temperature)
    sample_seed = (seed * 1_000_003 + index) % (2**31)
    if process_count > 1:  # one process keeps the single-process seed
      sample_seed = (sample_seed * 7919 + process_index) % (2**31)
    params = _to_local(self.params, self.decoder.mesh)  # gathered only when sampling
    out = self.decoder.generate(params, prompts, self.rl.max_new_tokens, params_sampling,
                                seed=sample_seed, eos_id=self.tokenizer.eos_id)
    rewards = self.rewards(rows, prompts, out.tokens)
    b, length, pad = len(prompts), self.seq_len, max(0, self.tokenizer.pad_id)
    batch = dict(inputs=np.full((b, length), pad, np.int32),
                 targets=np.full((b, length), pad, np.int32),
                 weights=np.zeros((b, length), np.float32),
                 old_logp=np.zeros((b, length), np.float32))
    for i, (prompt, tokens, logps) in enumerate(zip(prompts, out.tokens, out.logprobs)):
      seq = list(prompt) + list(tokens)
      n, start = len(seq) - 1, len(prompt) - 1
      batch["inputs"][i, :n] = seq[:-1]
      batch["targets"][i, :n] = seq[1:]
      batch["weights"][i, start:start + len(tokens)] = 1.0
      batch["old_logp"][i, start:start + len(tokens)] = logps
    batch["rewards"] = np.asarray(rewards, np.float32).reshape(-1, 1)
    return batch

  def rollout(self, seed: int, index: int, n_prompts: int, process_index: int = 0,
              process_count: int = 1) -> dict:
    """Rollout batch `index`: n_prompts prompts x G samples, as rows (see the module doc);
    this process samples its share, the whole rollout is returned."""
    if self.params is None:
      raise ValueError("RolloutDataset.batch before set_policy: the loop passes the policy")
    chosen = self._prompt_order(seed, index, n_prompts)
    share = process_share(n_prompts, process_index, process_count)
    batch = assemble_rows(self.sample_share(seed, index, chosen[share], process_index,
                                            process_count), process_count)
    rewards = batch["rewards"][:, 0]
    groups = rewards.reshape(-1, self.rl.group_size)
    self.last_stats = dict(reward=float(rewards.mean()),
                           flat_groups=float(np.mean(groups.std(axis=1) == 0)),
                           reply_tokens=float(batch["weights"].sum(axis=1).mean()))
    return self.add_advantages(batch, rewards)

  def empty_rows(self, n: int) -> dict:
    """Zero rows shaped like a rollout of n samples (a checkpoint's restore target)."""
    tokens, values = np.zeros((n, self.seq_len), np.int32), np.zeros((n, self.seq_len), np.float32)
    column = np.zeros((n, 1), np.float32)
    return dict(inputs=tokens, targets=tokens.copy(), weights=values, old_logp=values.copy(),
                rewards=column, advantages=column.copy())

  def checkpoint_state(self, batch_size: int) -> dict:
    """The "rl" entry of the train_state item: the cached rollout and its (seed, index,
    batch_size) key ((-1, -1, -1) and zeros when there is none)."""
    key, rows = self._cache
    if key is None or key[2] != batch_size:
      key, rows = (-1, -1, -1), self.empty_rows(batch_size * self.rl.minibatches)
    return {"key": np.asarray(key, np.int64), "rows": dict(rows)}

  def abstract_checkpoint_state(self, batch_size: int) -> dict:
    return {"key": np.full(3, -1, np.int64),
            "rows": self.empty_rows(batch_size * self.rl.minibatches)}

  def restore_checkpoint_state(self, state: dict) -> None:
    key = tuple(int(x) for x in np.asarray(state["key"]))
    if key[1] >= 0:
      self._cache = (key, {k: np.asarray(v) for k, v in state["rows"].items()})

  def add_advantages(self, batch: dict, rewards: np.ndarray) -> dict:
    """GRPO: one group-relative advantage per sample, [B, 1]."""
    batch["advantages"] = group_advantages(rewards, self.rl.group_size).reshape(-1, 1)
    return batch

  def batch(self, seed: int, step: int, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> dict:
    """Minibatch `step` of the current rollout: a rollout of minibatches x batch_size rows
    serves updates_per_rollout epochs, each in a fresh order seeded by (seed, rollout, epoch)."""
    g, n_mb = self.rl.group_size, self.rl.minibatches
    if batch_size % g:
      raise ValueError(f"train.batch_size={batch_size} must be a multiple of rl.group_size={g} "
                       "(batch_size / group_size prompts per step)")
    index, within = divmod(step, self.rl.updates_per_rollout * n_mb)
    epoch, minibatch = divmod(within, n_mb)
    key = (seed, index, batch_size)
    if self._cache[0] != key:
      self._cache = (key, self.rollout(seed, index, batch_size * n_mb // g, process_index,
                                       process_count))
    order = np.arange(batch_size * n_mb)
    if n_mb > 1:
      order = np.random.default_rng(np.random.SeedSequence(
          [seed & (2**63 - 1), 6, index, epoch])).permutation(order)
    rows = order[minibatch * batch_size:(minibatch + 1) * batch_size]
    per_process = batch_size // process_count
    rows = rows[process_index * per_process:(process_index + 1) * per_process]
    return {k: v[rows] for k, v in self._cache[1].items()}


def build_rollout_data(tokenizer, template, data_config, rl, seed: int = 0, ppo: bool = False):
  """-> (train RolloutDataset, None, heldout rows, info): prompts from the embedded tasks'
  train split (or a jsonl of {prompt, response | answer, [task]}), held-out task rows for
  exact match."""
  if rl.reward == "model" and not rl.reward_model:
    raise ValueError("rl.reward=model needs --config.rl.reward_model=RM_RUN_DIR (a run of "
                     "experiments/reward.py)")
  if data_config.data:
    train_rows, heldout = sft.split_rows(sft.read_jsonl(data_config.data), 0.05)
    source = data_config.data
  else:
    train_rows = tasks_lib.mixture("train", data_config.sft_train_per_task, seed)
    heldout = tasks_lib.mixture("heldout", data_config.sft_heldout_per_task, seed)
    source = "tasks"
  if ppo:
    from train.rl.ppo_rollout import PpoRolloutDataset  # pylint: disable=g-import-not-at-top
    train_ds = PpoRolloutDataset(train_rows, tokenizer, template, rl, data_config.seq_len)
  else:
    train_ds = RolloutDataset(train_rows, tokenizer, template, rl, data_config.seq_len)
  info = dict(source=source, kind="rollout", n_prompts=train_ds.n_windows,
              n_heldout=len(heldout), group_size=rl.group_size, reward=rl.reward,
              reward_model=rl.reward_model, max_new_tokens=rl.max_new_tokens)
  logging.info("RL prompts from %s: %d prompts, G=%d samples each, reward %s", source,
               train_ds.n_windows, rl.group_size,
               rl.reward if rl.reward == "task" else f"model {rl.reward_model}")
  return train_ds, None, heldout, info
