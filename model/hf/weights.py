"""Tensor names and layouts: Hugging Face checkpoint tensors <-> this project's parameters.

A `Rule` ties some of our leaves to some HF tensors with a pair of numpy functions, so
that one table serves import and export: a plain transpose (torch Linear is [out, in],
our kernels [in, out...]), GPT-2's fused Conv1D c_attn ([in, 3 * out], split into q / k /
v), or Mixtral's per-expert matrices (stacked on our leading expert axis). Layer rules
carry `{i}` in their HF names; their leaves sit under params["layers"]["block_b"] stacked
on a leading group axis (model/transformer.py), so HF layer i is group i // G, block i % G.

Attention heads keep HF's order and rotary embeddings use the same rotate-half pairing,
so q / k need no permutation.
"""

import dataclasses
from typing import Callable

import numpy as np

from model.config import ModelConfig
from model.transformer import group_size

# HF tensors that are buffers or duplicates, never parameters of ours.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class Rule:
  """ours: leaf paths ('/'-joined); hf: tensor names; to_ours / to_hf map lists of arrays."""
  ours: tuple
  hf: tuple
  to_ours: Callable
  to_hf: Callable


def _linear(our: str, hf: str, in_shape: tuple, out_shape: tuple) -> Rule:
  """torch Linear weight [out, in] <-> kernel [*in_shape, *out_shape]."""
  def to_ours(ws):
    return [ws[0].T.reshape(in_shape + out_shape)]

  def to_hf(ws):
    n_in = int(np.prod(in_shape))
    return [ws[0].reshape(n_in, -1).T]
  return Rule((our,), (hf,), to_ours, to_hf)


def _conv1d(our: str, hf: str, in_shape: tuple, out_shape: tuple) -> Rule:
  """GPT-2 Conv1D weight [in, out] <-> kernel [*in_shape, *out_shape]."""
  n_in = int(np.prod(in_shape))
  return Rule((our,), (hf,), lambda ws: [ws[0].reshape(in_shape + out_shape)],
              lambda ws: [ws[0].reshape(n_in, -1)])


def _same(our: str, hf: str, shape: tuple, hf_shape: tuple | None = None) -> Rule:
  """Same values; our `shape` vs HF's `hf_shape` (default: the same)."""
  hf_shape = hf_shape or shape
  return Rule((our,), (hf,), lambda ws: [ws[0].reshape(shape)],
              lambda ws: [ws[0].reshape(hf_shape)])


def _split(ours: tuple, hf: str, shapes: tuple, axis: int) -> Rule:
  """One fused HF tensor <-> several of our leaves, split along `axis` (GPT-2 c_attn)."""
  widths = [int(np.prod(s)) for s in shapes]

  def to_ours(ws):
    w = ws[0]
    parts = np.split(w, np.cumsum(widths)[:-1], axis=axis)
    lead = w.shape[:axis]
    return [p.reshape(lead + s) for p, s in zip(parts, shapes)]

  def to_hf(ws):
    lead = ws[0].shape[:ws[0].ndim - len(shapes[0])]
    return [np.concatenate([w.reshape(lead + (-1,)) for w in ws], axis=axis)]
  return Rule(ours, (hf,), to_ours, to_hf)


def _experts(our: str, hf_pattern: str, n: int, in_dim: int, out_dim: int) -> Rule:
  """n expert Linear weights [out, in] <-> one stacked kernel [n, in, out]."""
  names = tuple(hf_pattern.format(e=e, i="{i}", prefix="{prefix}") for e in range(n))

  def to_ours(ws):
    return [np.stack([w.T for w in ws]).reshape(n, in_dim, out_dim)]

  def to_hf(ws):
    return [w.T for w in ws[0]]
  return Rule((our,), names, to_ours, to_hf)


def layer_rules(c: ModelConfig, model_type: str) -> list[Rule]:
  """Rules of one layer (HF names contain `{i}`), paths relative to the layer's block."""
  d, n, k, h = c.d_model, c.n_heads, c.heads_kv, c.head_dim
  if model_type == "gpt2":
    p = "{prefix}h.{i}."
    rules = [_same("attn_norm/scale", p + "ln_1.weight", (d,)),
             _same("attn_norm/bias", p + "ln_1.bias", (d,)),
             _same("mlp_norm/scale", p + "ln_2.weight", (d,)),
             _same("mlp_norm/bias", p + "ln_2.bias", (d,)),
             _split(("attn/query/kernel", "attn/key/kernel", "attn/value/kernel"),
                    p + "attn.c_attn.weight", ((n, h),) * 3, axis=1),
             _split(("attn/query/bias", "attn/key/bias", "attn/value/bias"),
                    p + "attn.c_attn.bias", ((n, h),) * 3, axis=0),
             _conv1d("attn/out/kernel", p + "attn.c_proj.weight", (n, h), (d,)),
             _same("attn/out/bias", p + "attn.c_proj.bias", (d,)),
             _conv1d("mlp/wi/kernel", p + "mlp.c_fc.weight", (d,), (c.ffw_dim,)),
             _same("mlp/wi/bias", p + "mlp.c_fc.bias", (c.ffw_dim,)),
             _conv1d("mlp/wo/kernel", p + "mlp.c_proj.weight", (c.ffw_dim,), (d,)),
             _same("mlp/wo/bias", p + "mlp.c_proj.bias", (d,))]
    return rules
  p = "{prefix}layers.{i}."
  rules = [_same("attn_norm/scale", p + "input_layernorm.weight", (d,)),
           _same("mlp_norm/scale", p + "post_attention_layernorm.weight", (d,))]
  for ours, hf, heads in (("query", "q_proj", n), ("key", "k_proj", k), ("value", "v_proj", k)):
    rules.append(_linear(f"attn/{ours}/kernel", p + f"self_attn.{hf}.weight", (d,), (heads, h)))
    if c.qkv_bias:
      rules.append(_same(f"attn/{ours}/bias", p + f"self_attn.{hf}.bias", (heads, h),
                         (heads * h,)))
  rules.append(_linear("attn/out/kernel", p + "self_attn.o_proj.weight", (n, h), (d,)))
  if c.out_bias:
    rules.append(_same("attn/out/bias", p + "self_attn.o_proj.bias", (d,)))
  if c.is_moe:
    e, f = c.n_experts, c.expert_ffw_dim
    moe = p + "block_sparse_moe."
    rules.append(_linear("moe/router_kernel", moe + "gate.weight", (d,), (e,)))
    rules.append(_experts("moe/wi_gate/kernel", moe + "experts.{e}.w1.weight", e, d, f))
    rules.append(_experts("moe/wi_up/kernel", moe + "experts.{e}.w3.weight", e, d, f))
    rules.append(_experts("moe/wo/kernel", moe + "experts.{e}.w2.weight", e, f, d))
    return rules
  f = c.ffw_dim
  for ours, hf, shape_in, shape_out in (("wi_gate", "gate_proj", d, f), ("wi_up", "up_proj", d, f),
                                        ("wo", "down_proj", f, d)):
    rules.append(_linear(f"mlp/{ours}/kernel", p + f"mlp.{hf}.weight", (shape_in,),
                         (shape_out,)))
    if c.mlp_bias:
      rules.append(_same(f"mlp/{ours}/bias", p + f"mlp.{hf}.bias", (shape_out,)))
  return rules


def global_rules(c: ModelConfig, model_type: str) -> list[Rule]:
  """Rules of the embeddings, final norm and head (paths from the params root)."""
  d = c.d_model
  if model_type == "gpt2":
    return [_same("embed/embedding", "{prefix}wte.weight", (c.vocab_size, d)),
            _same("pos_embed/embedding", "{prefix}wpe.weight", (c.max_len, d)),
            _same("final_norm/scale", "{prefix}ln_f.weight", (d,)),
            _same("final_norm/bias", "{prefix}ln_f.bias", (d,))]
  rules = [_same("embed/embedding", "{prefix}embed_tokens.weight", (c.vocab_size, d)),
           _same("final_norm/scale", "{prefix}norm.weight", (d,))]
  if not c.tie_embeddings:
    rules.append(_linear("unembed/kernel", "lm_head.weight", (d,), (c.vocab_size,)))
  return rules


def hf_prefix(names, model_type: str) -> str:
  """'transformer.' / 'model.' when the checkpoint has the CausalLM wrapper's prefix."""
  if model_type == "gpt2":
    return "transformer." if "transformer.wte.weight" in names else ""
  return "model." if "model.embed_tokens.weight" in names else ""


def is_ignored(name: str) -> bool:
  return name.endswith(_IGNORED_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class LeafSource:
  """Where one of our leaves comes from: a rule, the leaf's position in rule.ours, and
  (for layer leaves) the block index inside a group."""
  rule: Rule
  position: int
  block: int | None


def leaf_sources(c: ModelConfig, model_type: str) -> dict:
  """{our leaf path (tuple of keys, scanned layout): LeafSource}."""
  out = {}
  for rule in global_rules(c, model_type):
    for j, path in enumerate(rule.ours):
      out[tuple(path.split("/"))] = LeafSource(rule, j, None)
  for b in range(group_size(c)):
    for rule in layer_rules(c, model_type):
      for j, path in enumerate(rule.ours):
        out[("layers", f"block_{b}") + tuple(path.split("/"))] = LeafSource(rule, j, b)
  return out


def hf_names(rule: Rule, prefix: str, layer: int | None = None) -> list[str]:
  return [name.format(prefix=prefix, i=layer) for name in rule.hf]
