"""Runs a model over eval rows: recorded decoding, text processing, and perplexity over text.

`GenerationConfig` is everything that decides the outputs (sampler, seed, max tokens, stop
strings, batch size, chat template, processing steps); it is written to config.json so a rerun
decodes the same tokens. Batches are padded to `batch_size` with copies of their last prompt,
so every batch reuses one program; with greedy decoding the outputs do not depend on the batch
size (rows never interact), with sampling the batch size is part of the recorded config.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from absl import logging

from infer import sampling
from infer.decode import Decoder
from infer.eval import data as data_lib
from model.chat import ChatTemplate, encode_prompt, get_template

SAMPLERS = ("greedy", "random", "temperature", "top_k", "top_p")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  sampler: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  max_new_tokens: int = 32
  stop: tuple[str, ...] = ()
  batch_size: int = 8
  template: str = ""  # "" = the run's own chat template (none: raw text); "raw"; or a name
  pre: tuple[str, ...] = ()  # steps applied to the user's last message
  post: tuple[str, ...] = ("strip@1",)  # steps applied to the decoded reply

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.sampler!r}; choose from {list(SAMPLERS)}")
    if self.batch_size < 1 or self.max_new_tokens < 1:
      raise ValueError("batch_size and max_new_tokens must be >= 1")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "GenerationConfig":
    d = dict(d)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ValueError(f"unknown generation setting(s) {unknown} in the recorded config; valid "
                       f"ones are {fields}")
    for key in ("stop", "pre", "post"):
      d[key] = tuple(d.get(key, ()))
    return cls(**d)


def make_decoder(loaded) -> Decoder:
  return Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)


def resolve_template(loaded, name: str) -> ChatTemplate | None:
  if name == "raw":
    return None
  if name:
    return get_template(name)
  return loaded.chat_template


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
  """Text before the earliest stop string, and whether one was found."""
  cuts = [text.find(s) for s in stops if s and s in text]
  return (text[:min(cuts)], True) if cuts else (text, False)


def _prompt_ids(loaded, template, messages, pre) -> list[int]:
  messages = [dict(m) for m in messages]
  messages[-1]["content"] = data_lib.apply_steps(pre, messages[-1]["content"])
  if template is not None:
    return encode_prompt(loaded.tokenizer, template, messages)
  text = "\n".join(m["content"] for m in messages)
  return loaded.tokenizer.encode(text)


def generate(loaded, rows: Sequence[dict], config: GenerationConfig,
             decoder: Decoder | None = None) -> list[dict]:
  """Each row plus "prediction" (processed), "raw_prediction", "finish_reason", "n_tokens"."""
  decoder = decoder or make_decoder(loaded)
  tokenizer = loaded.tokenizer
  template = resolve_template(loaded, config.template)
  stops = list(config.stop) + ([template.stop_text] if template and template.stop_text else [])
  prompts = [_prompt_ids(loaded, template, r["messages"], config.pre) for r in rows]
  room = loaded.model_config.max_len - decoder.n_prompt - config.max_new_tokens
  if room < 1:
    raise ValueError(f"--max_new_tokens={config.max_new_tokens} leaves no room for a prompt in "
                     f"the context of {loaded.model_config.max_len}; lower it")
  n_cut = sum(len(p) > room for p in prompts)
  if n_cut:
    logging.warning("%d prompts longer than %d tokens keep only their last %d tokens", n_cut,
                    room, room)
  prompts = [p[-room:] if p else [max(tokenizer.eos_id, 0)] for p in prompts]
  eos_id = tokenizer.eos_id if tokenizer.eos_id >= 0 else None

  def stop_fn(row, tokens):
    return bool(stops) and cut_at_stop(tokenizer.decode(tokens), stops)[1]

  out = []
  size = config.batch_size
  for start in range(0, len(prompts), size):
    chunk = prompts[start:start + size]
    padded = chunk + [chunk[-1]] * (size - len(chunk))
    params_sampling = sampling.make_sampling_params(
        size, config.sampler, temperature=config.temperature, top_k=config.top_k,
        top_p=config.top_p)
    result = decoder.generate(loaded.params, padded, config.max_new_tokens, params_sampling,
                              seed=config.seed + start, eos_id=eos_id,
                              stop_fn=stop_fn if stops else None)
    for i, row in enumerate(rows[start:start + len(chunk)]):
      tokens = result.tokens[i]
      if tokens and eos_id is not None and tokens[-1] == eos_id:
        tokens = tokens[:-1]
      raw, stopped = cut_at_stop(tokenizer.decode(tokens), stops)
      out.append(dict(row, raw_prediction=raw,
                      prediction=data_lib.apply_steps(config.post, raw),
                      input=row["messages"][-1]["content"],
                      finish_reason="stop" if stopped else result.finish_reasons[i],
                      n_tokens=len(result.tokens[i]), prompt_truncated=len(chunk[i]) >= room))
  return out


def windows(ids: Sequence[int], max_len: int) -> list[list[int]]:
  """Windows of at most max_len tokens overlapping by one, so each token after the first is
  predicted exactly once, with up to max_len - 1 tokens of context."""
  step = max_len - 1
  return [list(ids[s:s + max_len]) for s in range(0, max(1, len(ids) - 1), step)
          if len(ids[s:s + max_len]) >= 2]


class WindowScorer:
  """Per-token log-likelihoods of windows padded to the full context, so a window's numbers do
  not depend on what it is batched with (the same program shape at every batch position)."""

  def __init__(self, loaded):
    import jax
    import jax.numpy as jnp
    from model import sharding
    from model.transformer import Transformer
    from model.config import require_single_stack
    require_single_stack(loaded.model_config, "perplexity / bits-per-byte scoring")
    self.loaded, self.width = loaded, loaded.model_config.max_len
    model = Transformer(loaded.model_config, loaded.peft, loaded.quant)
    self._use_mesh = lambda: sharding.use_mesh(loaded.mesh)

    def logp(params, tokens_BL):
      logits_BLV, _ = model.apply({"params": params}, tokens_BL)
      logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
      return jnp.take_along_axis(logp_BLV[:, :-1], tokens_BL[:, 1:, None], axis=-1)[..., 0]
    self._logp = jax.jit(logp)

  def __call__(self, windows_list: Sequence[Sequence[int]]) -> list[np.ndarray]:
    tokens_BL = np.zeros((len(windows_list), self.width), np.int32)
    for i, w in enumerate(windows_list):
      tokens_BL[i, :len(w)] = w
    with self._use_mesh():
      logp_BL = np.asarray(self._logp(self.loaded.params, tokens_BL))
    return [logp_BL[i, :len(w) - 1] for i, w in enumerate(windows_list)]


def perplexity(loaded, documents: Sequence[tuple[str, str]], batch_size: int = 8) -> list[dict]:
  """Per window: {"document", "window", "nats", "tokens", "bytes"}.

  A document is encoded as bos (or eos when the tokenizer has no bos) followed by its text,
  so every text token is predicted; its UTF-8 bytes are counted on its first window.
  """
  if loaded.peft.n_prompt:
    raise ValueError("perplexity of a prompt-tuned run is not supported; merge or drop the soft "
                     "prompt (infer.export) first")
  tokenizer = loaded.tokenizer
  start_id = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
  if start_id < 0:
    raise ValueError("the tokenizer has neither bos nor eos to start a document with")
  scorer = WindowScorer(loaded)
  items = []
  for name, text in documents:
    ids = [start_id] + tokenizer.encode(text)
    n_bytes = len(text.encode("utf-8"))
    for k, window in enumerate(windows(ids, loaded.model_config.max_len)):
      items.append((name, k, window, n_bytes if k == 0 else 0))
  out = []
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    logps = scorer([w for _, _, w, _ in padded])
    for (name, k, window, n_bytes), logp in zip(chunk, logps):
      out.append(dict(document=name, window=k, nats=float(-np.sum(logp, dtype=np.float64)),
                      tokens=len(window) - 1, bytes=n_bytes))
  return out


def perplexity_values(rows: Sequence[dict]):
  """value functions over window indices: perplexity and bits per byte."""
  nats = np.asarray([r["nats"] for r in rows])
  toks = np.asarray([r["tokens"] for r in rows], np.float64)
  by_doc: dict[str, float] = {}
  for r in rows:
    by_doc[r["document"]] = by_doc.get(r["document"], 0.0) + r["tokens"]
  # bytes spread over a document's windows in proportion to their tokens, so resampling
  # windows resamples bytes with them
  doc_bytes = {r["document"]: r["bytes"] for r in rows if r["window"] == 0}
  share = np.asarray([doc_bytes[r["document"]] * r["tokens"] / by_doc[r["document"]]
                      for r in rows])
  return {
      "perplexity": lambda idx: math.exp(nats[idx].sum() / toks[idx].sum()),
      "bits_per_byte": lambda idx: nats[idx].sum() / math.log(2) / share[idx].sum(),
      "loss": lambda idx: nats[idx].sum() / toks[idx].sum(),
  }
