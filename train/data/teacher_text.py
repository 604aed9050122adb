"""Data distillation: the teacher writes text, the student trains on real + synthetic.

`with_teacher_text(config, data, workdir, mesh)` (distill.method=data) samples
`distill.synthetic_prompts` continuations from the teacher run (infer.decode, temperature 1),
each prompted with the first `distill.prompt_tokens` tokens of a training window, writes
them to WORKDIR/synthetic.jsonl (reused when the run resumes; written only once the run
directory passed its resume checks) and replaces the training
set by a `MixedDataset`: each row of every batch is a synthetic window with probability
`distill.mix`, drawn from (seed, step) alone, so batches stay a pure function of the step.
The student then minimises plain cross-entropy (sequence-level KD, Kim & Rush 2016).
"""

import hashlib
import json
import os

import numpy as np
from absl import logging

from train.dataset import TokenDataset

SYNTHETIC_FILE = "synthetic.jsonl"


class MixedDataset:
  """Rows from `real` or `synthetic` (TokenDatasets), synthetic with probability `mix`."""

  def __init__(self, real, synthetic, mix: float):
    self.real, self.synthetic, self.mix = real, synthetic, float(mix)
    self.name = real.name
    self.seq_len = real.seq_len
    self.n_windows = real.n_windows + synthetic.n_windows
    self.tokens_per_epoch = real.tokens_per_epoch / max(1e-9, 1.0 - self.mix)
    digest = hashlib.sha256(f"{getattr(real, 'checksum', '')}:{mix}".encode())
    digest.update(np.ascontiguousarray(synthetic.tokens).tobytes())
    self.checksum = digest.hexdigest()[:32]

  def check_batch_size(self, batch_size: int) -> None:
    self.real.check_batch_size(batch_size)
    self.synthetic.check_batch_size(batch_size)

  def epochs_at(self, step: int, batch_size: int) -> float:
    return self.real.epochs_at(step, batch_size) * (1.0 - self.mix)

  def batch(self, seed: int, step: int, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> dict:
    real = self.real.batch(seed, step, batch_size, process_index, process_count)
    fake = self.synthetic.batch(seed + 1, step, batch_size, process_index, process_count)
    rng = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), step, 31]))
    rows = batch_size // process_count
    pick = (rng.random(batch_size) < self.mix)[process_index * rows:(process_index + 1) * rows]
    return {k: np.where(pick[:, None], fake[k], real[k]) for k in real}


def _teacher_samples(config, real, mesh_config) -> list[list[int]]:
  from infer import sampling  # pylint: disable=g-import-not-at-top
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  dc = config.distill
  loaded = load_model(dc.teacher, mesh_config=mesh_config)
  rng = np.random.default_rng(np.random.SeedSequence([config.train.seed, 7]))
  windows = rng.permutation(real.n_windows)[:dc.synthetic_prompts]
  prompts = [np.asarray(real.tokens[w * real.seq_len:w * real.seq_len + dc.prompt_tokens])
             .tolist() for w in windows]
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  out = decoder.generate(loaded.params, prompts, dc.synthetic_tokens,
                         sampling.make_sampling_params(len(prompts), "random"),
                         seed=config.train.seed, eos_id=loaded.tokenizer.eos_id)
  return [p + t for p, t in zip(prompts, out.tokens)]


def write_samples(path: str, samples, tokenizer) -> None:
  """The synthetic set as jsonl ({"text", "tokens"} per sample), written atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    for tokens in samples:
      f.write(json.dumps({"text": tokenizer.decode(tokens), "tokens": tokens}) + "\n")
  os.replace(path + ".tmp", path)
  logging.info("data distillation: %d teacher samples written to %s", len(samples), path)


def with_teacher_text(config, data, workdir: str, mesh_config=None):
  """-> (`data` with its training set mixed with teacher-generated windows (see module
  doc), `write`): `write()` saves freshly generated samples to WORKDIR/synthetic.jsonl. The
  caller runs it only after the run directory has passed its resume checks, so a refused
  run leaves nothing behind; it does nothing when the samples were read from that file."""
  dc = config.distill
  path = os.path.join(workdir, SYNTHETIC_FILE)
  write = lambda: None
  if os.path.exists(path):
    with open(path) as f:
      samples = [json.loads(line)["tokens"] for line in f]
    logging.info("data distillation: %d teacher samples read from %s", len(samples), path)
  else:
    samples = _teacher_samples(config, data.train, mesh_config)
    write = lambda: write_samples(path, samples, data.tokenizer)
  eos = [data.tokenizer.eos_id] if data.tokenizer.eos_id is not None else []
  tokens = np.asarray([t for s in samples for t in list(s) + eos], np.int32)
  synthetic = TokenDataset(tokens, data.train.seq_len, name="synthetic")
  data.train = MixedDataset(data.train, synthetic, dc.mix)
  data.info = dict(data.info, synthetic=dict(file=path, samples=len(samples),
                                             tokens=int(tokens.size), mix=dc.mix))
  return data, write
