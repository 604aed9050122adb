"""Parameter-efficient fine-tuning: the config, which leaves train, and LoRA merging.

Methods (PeftConfig.method):
  "full"           every parameter trains.
  "lora"           targeted projections (model/layers.py Projection) get factors
                   lora_a [..., R] and lora_b [R, ...] (B starts at zero); only they train.
  "adapters"       bottleneck adapters (model/adapters.py) after the attention and / or
                   FFN sub-layers (up projection starts at zero); only they train.
  "prompt_tuning"  a learned soft prompt [P, D] is prepended to the token embeddings;
                   only it trains.
`base_quant` ("int8" | "int4") stores the frozen base quantized (QLoRA with "lora"):
model/quant.py; the PEFT parameters stay float32.
At initialisation every method computes exactly the base model. Parameter trees here are
plain nested dicts (Flax's "params" collection, boxed or not); a path is a tuple of keys.
"""

import dataclasses
import math
import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

METHODS = ("full", "lora", "adapters", "prompt_tuning")
ADAPTER_WHERE = ("attention", "mlp", "both")
PROMPT_INITS = ("vocab", "random")
BASE_QUANTS = ("none", "int8", "int4")
# Projection roles (model/layers.py) each targets preset selects; anything else is a regex.
TARGET_PRESETS = {
    "attention": r"attn\..*",
    "attention_mlp": r"(attn|mlp)\..*",
    "experts": r"expert\..*",
    "all": r".*",
}
LORA_LEAVES = ("lora_a", "lora_b")
ADAPTER_MODULES = ("adapter_attn", "adapter_mlp")
SOFT_PROMPT = "soft_prompt"


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Which PEFT method to use and its knobs (hashable: static under jit)."""
  method: str = "full"
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = "attention"
  adapter_dim: int = 16
  adapter_where: str = "both"
  prompt_length: int = 16
  prompt_init: str = "vocab"
  base_quant: str = "none"  # QLoRA: the frozen base stored as int8 / int4

  def __post_init__(self):
    _check_choice("method", self.method, METHODS)
    _check_choice("base_quant", self.base_quant, BASE_QUANTS)
    if self.base_quant != "none" and self.method == "full":
      raise ValueError("peft.base_quant needs a frozen base: full fine-tuning cannot train "
                       "quantized weights; set --config.peft.method=lora (QLoRA)")
    _check_choice("adapter_where", self.adapter_where, ADAPTER_WHERE)
    _check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
    if self.rank <= 0:
      raise ValueError(f"peft.rank={self.rank} must be positive; "
                       "set --config.peft.rank to a positive integer")
    if not self.alpha > 0:
      raise ValueError(f"peft.alpha={self.alpha} must be positive; "
                       "set --config.peft.alpha to a positive number (e.g. 2 * rank)")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"peft.dropout={self.dropout} must be in [0, 1); "
                       "set --config.peft.dropout accordingly")
    if self.adapter_dim <= 0:
      raise ValueError(f"peft.adapter_dim={self.adapter_dim} must be positive; "
                       "set --config.peft.adapter_dim to a positive integer")
    if self.prompt_length < 0:
      raise ValueError(f"peft.prompt_length={self.prompt_length} must be >= 0; "
                       "set --config.peft.prompt_length to a non-negative integer")
    try:
      re.compile(self.target_pattern)
    except re.error as e:
      raise ValueError(f"peft.targets={self.targets!r} is neither a preset "
                       f"{sorted(TARGET_PRESETS)} nor a valid regex ({e}); fix "
                       "--config.peft.targets") from None

  @property
  def target_pattern(self) -> str:
    return TARGET_PRESETS.get(self.targets, self.targets)

  @property
  def lora_scale(self) -> float:
    return self.alpha / self.rank

  @property
  def n_prompt(self) -> int:
    """Soft-prompt length P actually prepended (0 unless method is prompt_tuning)."""
    return self.prompt_length if self.method == "prompt_tuning" else 0

  def adapter_at(self, where: str) -> bool:
    """Whether an adapter follows the "attention" or "mlp" sub-layer."""
    return self.method == "adapters" and self.adapter_where in (where, "both")

  def lora_targets(self, role: str) -> bool:
    """Whether the projection with this role (e.g. "attn.query") gets LoRA factors."""
    return self.method == "lora" and re.fullmatch(self.target_pattern, role) is not None


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"peft.{name}={value!r} is not one of {choices}; "
                     f"set --config.peft.{name} to one of them")


def _key_name(key) -> str:
  """A path entry as a string: dict keys, jax DictKey / GetAttrKey, or plain strings."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def is_trainable(path, peft: PeftConfig) -> bool:
  """Whether the leaf at `path` (a tuple of keys) is trained under `peft.method`."""
  names = [_key_name(k) for k in path]
  if peft.method == "full":
    return True
  if peft.method == "lora":
    return bool(names) and names[-1] in LORA_LEAVES
  if peft.method == "adapters":
    return any(n in ADAPTER_MODULES for n in names)
  return bool(names) and names[-1] == SOFT_PROMPT


def _is_node(x) -> bool:
  return isinstance(x, Mapping)


def _partition(tree, pred, path=()):
  """(kept, rest): two nested dicts of tree's leaves where pred(path) is True / False."""
  kept, rest = {}, {}
  for key, value in tree.items():
    sub = path + (key,)
    if _is_node(value):
      k, r = _partition(value, pred, sub)
      if k:
        kept[key] = k
      if r:
        rest[key] = r
    elif pred(sub):
      kept[key] = value
    else:
      rest[key] = value
  return kept, rest


def split(params, peft: PeftConfig):
  """(trainable, frozen): disjoint nested dicts with params' nesting; empty dicts dropped."""
  return _partition(params, lambda path: is_trainable(path, peft))


def combine(trainable, frozen, _path=()):
  """The deep union of two disjoint trees (the inverse of `split`)."""
  out = dict(frozen)
  for key, value in trainable.items():
    if key not in out:
      out[key] = value
    elif _is_node(value) and _is_node(out[key]):
      out[key] = combine(value, out[key], _path + (key,))
    else:
      raise ValueError(f"combine: both trees hold {'/'.join(map(str, _path + (key,)))}; "
                       "the trainable and frozen trees must be disjoint (use peft.split)")
  return out


def graft(base_params, fresh_params):
  """The fresh tree (e.g. initialised with LoRA) with every leaf that base has taken from base.

  Base leaves the fresh tree lacks are an error: grafting a checkpoint into a model of a
  different shape (layer count, scan_layers, MoE) would otherwise silently keep random
  weights.
  """
  base = nn.meta.unbox(base_params)
  missing = []

  def walk(b, f, path):
    out = dict(f)
    for key, value in b.items():
      where = "/".join(map(str, path + (key,)))
      if key not in f:
        missing.append(where)
      elif _is_node(value) != _is_node(f[key]):
        raise ValueError(f"graft: {where} is a module in one tree and a leaf in the other")
      elif _is_node(value):
        out[key] = walk(value, f[key], path + (key,))
      else:
        target = f[key]
        shape = getattr(nn.meta.unbox(target), "shape", None)
        if shape != value.shape:
          raise ValueError(f"graft: base {where} has shape {value.shape} but the model "
                           f"expects {shape}; load a checkpoint of the same model config")
        if isinstance(target, nn.meta.AxisMetadata):
          value = target.replace_boxed(value)
        out[key] = value
    return out
  out = walk(base, fresh_params, ())
  if missing:
    raise ValueError(f"graft: base params {missing[:5]} (of {len(missing)}) do not exist in "
                     "the model; was the base saved with another model config "
                     "(n_layers, scan_layers, n_experts)?")
  return out


def lora_delta(lora_a, lora_b, kernel_shape, scale: float, precision=None):
  """scale * A.B reshaped to the kernel's shape; works on leading stacked axes.

  A is lead + contract + (R,), B is lead + (R,) + out and the kernel lead + contract + out,
  so the number of leading (layer / expert) axes follows from the three ranks.
  """
  n_lead = lora_a.ndim + lora_b.ndim - 2 - len(kernel_shape)
  lead = tuple(lora_a.shape[:n_lead])
  r = lora_a.shape[-1]
  a = lora_a.reshape(lead + (-1, r))
  b = lora_b.reshape(lead + (r, -1))
  delta = jnp.matmul(a, b, precision=precision)
  return (scale * delta).reshape(kernel_shape)


def _map_lora_modules(tree, fn):
  """Rebuilds tree with fn(node) applied to every dict holding kernel, lora_a and lora_b."""
  if not _is_node(tree):
    return tree
  if all(k in tree for k in ("kernel",) + LORA_LEAVES):
    return fn(tree)
  return {key: _map_lora_modules(value, fn) for key, value in tree.items()}


def merge_lora(params, peft: PeftConfig, model_config=None):
  """A plain tree without LoRA leaves whose kernels are kernel + (alpha/R) A.B.

  Works on scanned (layer-stacked) and expert-stacked kernels alike; `model_config` is
  accepted for symmetry with the model API and not needed (shapes decide the merge).
  """
  del model_config

  def merge(node):
    out = {k: v for k, v in node.items() if k not in LORA_LEAVES}
    delta = lora_delta(node["lora_a"], node["lora_b"], node["kernel"].shape, peft.lora_scale,
                       jax.lax.Precision.HIGHEST)
    out["kernel"] = node["kernel"] + delta.astype(node["kernel"].dtype)
    return out
  return _map_lora_modules(nn.meta.unbox(params), merge)


def unmerge_lora(merged_params, lora_params, peft: PeftConfig):
  """The base tree back from a merged one: kernels minus (alpha/R) A.B of `lora_params`.

  `lora_params` is any tree holding the factors (e.g. the trainable half of `split`);
  `combine(unmerge_lora(...), lora_params)` restores the LoRA model's params.
  """
  lora = nn.meta.unbox(lora_params)

  def walk(merged, factors):
    if not _is_node(merged) or not _is_node(factors):
      return merged
    if "kernel" in merged and all(k in factors for k in LORA_LEAVES):
      delta = lora_delta(factors["lora_a"], factors["lora_b"], merged["kernel"].shape,
                         peft.lora_scale, jax.lax.Precision.HIGHEST)
      return dict(merged, kernel=merged["kernel"] - delta.astype(merged["kernel"].dtype))
    return {k: walk(v, factors.get(k, {})) for k, v in merged.items()}
  return walk(nn.meta.unbox(merged_params), lora)


def soft_prompt_from_vocab(params, rng, prompt_length: int):
  """[P, D] rows of the token embedding table at random token ids (a soft-prompt init).

  `params` is the model's param tree (with or without the outer "params" key). Rows of
  real embeddings start prompt tuning in the region the model already reads well.
  """
  params = nn.meta.unbox(params)
  params = params.get("params", params)
  if "embed" not in params or "embedding" not in params["embed"]:
    raise ValueError("soft_prompt_from_vocab needs the model params (with embed/embedding)")
  table_VD = params["embed"]["embedding"]
  ids_P = jax.random.randint(rng, (prompt_length,), 0, table_VD.shape[0])
  return jnp.take(table_VD, ids_P, axis=0).astype(jnp.float32)


def count_params(tree) -> int:
  """Number of scalars in a (possibly boxed) parameter pytree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(tree)))

