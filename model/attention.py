"""Causal self-attention (MHA / GQA / MQA) with an optional explicit KV cache.

The cache is a plain pytree dict, one entry per model (all layers stacked):
  {"k": [n_layers, B, S, K, H], "v": [n_layers, B, S, K, H], "lengths": [B] int32}
with S the cache capacity. With a cache, the L new tokens of row b sit at positions
lengths[b] + arange(L); their k/v are written there and query i attends to cache
slots j <= lengths[b] + i. Slots past that (stale or padding k/v) are masked, so a
caller may overwrite `lengths` (e.g. with true prompt lengths after a right-padded
prefill). Writing past capacity is not checked here: the caller sizes the cache.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model import sharding
from model.config import ModelConfig, compute_dtype
from model.layers import apply_rope, out_proj_std, param_init

_CACHE_KV_AXES = ("layers", "act_batch", "act_cache_length", "act_kv_heads", "act_head_dim")


def init_cache(config: ModelConfig, batch: int, capacity: int, dtype=None) -> dict:
  """An empty KV cache for `batch` rows of up to `capacity` positions."""
  dtype = dtype or compute_dtype(config)
  shape = (config.n_layers, batch, capacity, config.heads_kv, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "lengths": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(config: ModelConfig) -> dict:
  """Logical axis names of each `init_cache` entry (for sharding.logical_spec)."""
  del config
  return {"k": _CACHE_KV_AXES, "v": _CACHE_KV_AXES, "lengths": ("act_batch",)}


def attention_impl(config: ModelConfig) -> str:
  """"cudnn" if asked for, or on "auto" with a GPU and 16-bit compute; else "xla"."""
  if config.attention_impl == "cudnn":
    return "cudnn"
  if (config.attention_impl == "auto" and jax.default_backend() == "gpu"
      and config.dtype == "bfloat16"):
    return "cudnn"
  return "xla"


def cache_mask(lengths_B, q_len: int, capacity: int):
  """[B, 1, L, S] bool: query i of row b sees slots j <= lengths[b] + i."""
  q_pos_BL = lengths_B[:, None] + jnp.arange(q_len, dtype=jnp.int32)
  return (jnp.arange(capacity, dtype=jnp.int32) <= q_pos_BL[..., None])[:, None]


def reference_attention(q_BLNH, k_BSKH, v_BSKH, mask_BLS=None):
  """Plain softmax attention in float32; causal (aligned at 0) if no mask is given."""
  b, l, n, h = q_BLNH.shape
  s, k = k_BSKH.shape[1], k_BSKH.shape[2]
  if mask_BLS is None:
    mask_BLS = jnp.broadcast_to(jnp.tril(jnp.ones((l, s), bool)), (b, l, s))
  q = q_BLNH.astype(jnp.float32).reshape(b, l, k, n // k, h)
  logits = jnp.einsum("blkgh,bskh->bkgls", q, k_BSKH.astype(jnp.float32)) / np.sqrt(h)
  logits = jnp.where(mask_BLS[:, None, None], logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bkgls,bskh->blkgh", probs, v_BSKH.astype(jnp.float32))
  return out.reshape(b, l, n, h).astype(q_BLNH.dtype)


def causal_attention(q_BLNH, k_BLKH, v_BLKH, implementation: str = "xla"):
  """Causal GQA attention, scale 1/sqrt(head_dim), via jax.nn.dot_product_attention."""
  return jax.nn.dot_product_attention(
      q_BLNH, k_BLKH, v_BLKH, is_causal=True, scale=1.0 / np.sqrt(q_BLNH.shape[-1]),
      implementation=implementation)


def cached_attention(q_BLNH, k_BSKH, v_BSKH, mask_B1LS):
  """Attention over a cache with an explicit mask.

  Always XLA: cuDNN flash attention has no per-row offset causal mask, and decode
  (L=1) is bound by reading the cache, not by this kernel.
  """
  return jax.nn.dot_product_attention(
      q_BLNH, k_BSKH, v_BSKH, mask=mask_B1LS, scale=1.0 / np.sqrt(q_BLNH.shape[-1]),
      implementation="xla")


def _write_rows(cache_BSKH, new_BLKH, starts_B):
  """Writes each row's new entries at its own offset."""
  update = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (s, 0, 0)))
  return update(cache_BSKH, new_BLKH.astype(cache_BSKH.dtype), starts_B)


class Attention(nn.Module):
  """Causal self-attention; `kv_cache` is one layer's (k_BSKH, v_BSKH, lengths_B)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, kv_cache=None):
    c = self.config
    dtype = compute_dtype(c)
    n, k, h, d = c.n_heads, c.heads_kv, c.head_dim, c.d_model

    def kernel(name, shape, names, std):
      return self.param(name, param_init(std, names), shape, jnp.float32).astype(dtype)

    w_q = kernel("query", (d, n, h), ("embed", "heads", "head_dim"), c.init_std)
    w_k = kernel("key", (d, k, h), ("embed", "kv_heads", "head_dim"), c.init_std)
    w_v = kernel("value", (d, k, h), ("embed", "kv_heads", "head_dim"), c.init_std)
    w_o = kernel("out", (n, h, d), ("heads", "head_dim", "embed"), out_proj_std(c))

    q_BLNH = jnp.einsum("bld,dnh->blnh", x_BLD, w_q)
    k_BLKH = jnp.einsum("bld,dkh->blkh", x_BLD, w_k)
    v_BLKH = jnp.einsum("bld,dkh->blkh", x_BLD, w_v)
    if c.pos_encoding == "rope":
      q_BLNH = apply_rope(q_BLNH, positions_BL, c.rope_theta)
      k_BLKH = apply_rope(k_BLKH, positions_BL, c.rope_theta)
    q_axes = ("act_batch", "act_length", "act_heads", "act_head_dim")
    q_BLNH = sharding.constrain(q_BLNH, q_axes)
    kv_axes = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")
    k_BLKH = sharding.constrain(k_BLKH, kv_axes)
    v_BLKH = sharding.constrain(v_BLKH, kv_axes)

    if kv_cache is None:
      out_BLNH = causal_attention(q_BLNH, k_BLKH, v_BLKH, attention_impl(c))
      new_cache = None
    else:
      k_BSKH, v_BSKH, lengths_B = kv_cache
      k_BSKH = _write_rows(k_BSKH, k_BLKH, lengths_B)
      v_BSKH = _write_rows(v_BSKH, v_BLKH, lengths_B)
      cache_axes = ("act_batch", "act_cache_length", "act_kv_heads", "act_head_dim")
      k_BSKH = sharding.constrain(k_BSKH, cache_axes)
      v_BSKH = sharding.constrain(v_BSKH, cache_axes)
      mask = cache_mask(lengths_B, x_BLD.shape[1], k_BSKH.shape[1])
      out_BLNH = cached_attention(q_BLNH, k_BSKH.astype(dtype), v_BSKH.astype(dtype), mask)
      new_cache = (k_BSKH, v_BSKH)
    out_BLNH = sharding.constrain(out_BLNH, q_axes)
    y_BLD = jnp.einsum("blnh,nhd->bld", out_BLNH, w_o)
    return y_BLD, new_cache
