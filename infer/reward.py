"""A trained reward model as a scorer of (prompt, reply) pairs.

  scorer = RewardScorer("runs/rm")
  scorer.score(["What is 7 + 5?"], ["12"])                    # -> [float]
  decoder.best_of_n(..., scorer=scorer.best_of_n_scorer(policy_tokenizer, policy_template))
  python -m infer.generate --workdir=runs/sft --sampler=best_of_n --n=8 --scorer=runs/rm ...

The run directory must say head="reward" in config.json (experiments/reward.py). A reply
is encoded exactly as in training (train/data/preference.py via sft.encode_example): bos,
the templated prompt, reply + turn suffix, eos; the reward is read at the reply's last
token (the position that predicts eos). Scoring is one jitted forward per length bucket.
"""

import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from infer.decode import bucket_length
from model import sharding, store
from model.chat import ChatTemplate, encode_prompt, get_template, prompt_messages
from model.mesh import MeshConfig
from model.reward_head import RewardModel
from model.tokenizer import load_tokenizer


class RewardScorer:
  """Loads a reward-model run dir (params only) and scores replies; batches by bucket."""

  def __init__(self, workdir: str, mesh_config: MeshConfig | None = None, mesh=None):
    run = store.read_run_config(workdir)
    if run.head != "reward":
      raise ValueError(f"{workdir} is not a reward model (config.json head={run.head!r}); train "
                       "one with python -m train.main --config=experiments/reward.py "
                       "--init_from=SFT_RUN --workdir=...")
    self.workdir = workdir
    self.config = run.model_config()
    self.model = RewardModel(self.config, run.peft_config())
    self.mesh = mesh or sharding.make_mesh((mesh_config or MeshConfig()).as_dict())
    self.tokenizer = load_tokenizer(os.path.join(workdir, store.TOKENIZER_DIR))
    template = store.read_chat_template_dict(workdir)
    self.template = ChatTemplate.from_dict(template) if template else get_template("plain")
    with sharding.use_mesh(self.mesh):
      boxed = jax.eval_shape(
          lambda rng: self.model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"],
          jax.random.key(0))
    shardings = sharding.tree_shardings(boxed, self.mesh)
    abstract = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                 sharding=s),
                            nn.unbox(boxed), shardings)
    self.params, self.step, _ = store.restore_params(workdir, abstract, version=run.version)
    self._apply = jax.jit(lambda params, tokens_BL, last_B: self.model.apply(
        {"params": params}, tokens_BL, last_B)[0])
    logging.info("reward model %s step %d loaded", workdir, self.step)

  def reply_tokens(self, prompt_ids: Sequence[int], reply: str) -> list[int]:
    """The training encoding of a (prompt, reply) example: prompt ids, reply + suffix, eos."""
    ids = list(prompt_ids) + self.tokenizer.encode(reply + self.template.turn_suffix)
    return ids + ([self.tokenizer.eos_id] if self.tokenizer.eos_id >= 0 else [])

  def score_tokens(self, rows: Sequence[Sequence[int]], chunk: int = 64) -> np.ndarray:
    """Rewards of full example token rows (as `reply_tokens` builds them), float32 [n]."""
    limit = self.config.max_len
    out = []
    for start in range(0, len(rows), chunk):
      part = [list(r)[-(limit + 1):] for r in rows[start:start + chunk]]  # keep the reply
      width = bucket_length(max(len(r) - 1 for r in part), limit)
      tokens = np.zeros((len(part), width), np.int32)
      last = np.zeros((len(part),), np.int32)
      for i, row in enumerate(part):
        inputs = row[:-1]
        tokens[i, :len(inputs)] = inputs
        last[i] = max(len(inputs) - 1, 0)
      with sharding.use_mesh(self.mesh):
        out.append(np.asarray(self._apply(self.params, jnp.asarray(tokens), jnp.asarray(last))))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def score(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
    """Rewards of replies to plain-text prompts (wrapped in the run's chat template)."""
    if len(prompts) != len(replies):
      raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    rows = [self.reply_tokens(encode_prompt(self.tokenizer, self.template, prompt_messages(p)),
                              r) for p, r in zip(prompts, replies)]
    return [float(x) for x in self.score_tokens(rows)]

  def best_of_n_scorer(self, tokenizer, template: ChatTemplate | None
                       ) -> Callable[[list[int], list[int], list[float]], float]:
    """A `Decoder.best_of_n` scorer for a policy with `tokenizer` and chat `template`.

    The sample is cut at eos and at the template's turn end, like a printed reply; the
    policy's prompt ids are reused when both models share a tokenizer, else re-encoded.
    """
    same = tokenizer.fingerprint == self.tokenizer.fingerprint

    def scorer(prompt_ids, tokens, logprobs) -> float:
      del logprobs
      tokens = list(tokens)
      if tokens and tokens[-1] == tokenizer.eos_id:
        tokens = tokens[:-1]
      text = tokenizer.decode(tokens)
      reply = template.cut_reply(text) if template else text.strip()
      prompt = list(prompt_ids)
      if not same:
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id >= 0 else []
        prompt = bos + self.tokenizer.encode(tokenizer.decode(prompt_ids))
      return float(self.score_tokens([self.reply_tokens(prompt, reply)])[0])
    return scorer
