"""Self-attention (MHA / GQA / MQA) with masks as data and an optional explicit KV cache.

A `Mask` says which keys each query sees: causal, bidirectional or prefix-LM, optionally
restricted to packed segments (segment ids). Plain causal attention keeps the fast
`is_causal=True` kernel (cuDNN on GPU); every other mask is an explicit boolean [B, L, S]
through XLA.

The cache is a plain pytree dict, one entry per model (all layers stacked):
  {"k": [n_layers, B, K, S, H], "v": [n_layers, B, K, S, H], "lengths": [B] int32}
with S the cache capacity. Heads come before positions so that the attention dots over a
layer's [B, K, S, H] slice need no transposed copy of it (XLA wants the dots' batch dims
major-most; the [B, S, K, H] order cost a copy per layer per decode step).
With a cache, the L new tokens of row b sit at positions
lengths[b] + arange(L); their k/v are written there and query i attends to cache
slots j <= lengths[b] + i. Slots past that (stale or padding k/v) are masked, so a
caller may overwrite `lengths` (e.g. with true prompt lengths after a right-padded
prefill). Writing past capacity is not checked here: the caller sizes the cache.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from model import sharding
from model.config import ModelConfig, compute_dtype
from model.layers import Projection, apply_rope, out_proj_std, rope_inv_freq
from model.peft import PeftConfig
from model.quant import QuantConfig

MASK_KINDS = ("causal", "bidirectional", "prefix")

_CACHE_KV_AXES = ("layers", "act_batch", "act_kv_heads", "act_cache_length", "act_head_dim")


@flax.struct.dataclass
class Mask:
  """Which keys each query attends to, as data (a pytree: it passes through jit and scan).

  kind: "causal" (key j <= query i), "bidirectional" (all keys) or "prefix" (prefix-LM:
    query i of row b sees keys j < prefix_lengths_B[b] plus the causal ones).
  segment_ids_BL: int32, > 0 = the packed example a token belongs to, 0 = padding. Keys
    must also share the query's segment; a padding token sees only itself (no NaN rows).
  """
  kind: str = flax.struct.field(pytree_node=False, default="causal")
  segment_ids_BL: jax.Array | None = None
  prefix_lengths_B: jax.Array | None = None

  def __post_init__(self):
    if self.kind not in MASK_KINDS:
      raise ValueError(f"mask kind {self.kind!r} is not one of {MASK_KINDS}")
    if (self.kind == "prefix") != (self.prefix_lengths_B is not None):
      raise ValueError("a prefix mask needs prefix_lengths_B, and only a prefix mask takes "
                       "them; build it with Mask.prefix(prefix_lengths_B)")

  @classmethod
  def causal(cls) -> "Mask":
    return cls("causal")

  @classmethod
  def packed(cls, segment_ids_BL) -> "Mask":
    """Causal attention inside each packed example."""
    return cls("causal", jnp.asarray(segment_ids_BL, jnp.int32))

  @classmethod
  def bidirectional(cls, segment_ids_BL=None) -> "Mask":
    seg = None if segment_ids_BL is None else jnp.asarray(segment_ids_BL, jnp.int32)
    return cls("bidirectional", seg)

  @classmethod
  def prefix(cls, prefix_lengths_B, segment_ids_BL=None) -> "Mask":
    seg = None if segment_ids_BL is None else jnp.asarray(segment_ids_BL, jnp.int32)
    return cls("prefix", seg, jnp.asarray(prefix_lengths_B, jnp.int32))

  @property
  def is_plain_causal(self) -> bool:
    return self.kind == "causal" and self.segment_ids_BL is None

  def mask_BLS(self, length: int):
    """Boolean [B, L, S] with L = S = length (B = 1 when no per-row data is given)."""
    i_L = jnp.arange(length, dtype=jnp.int32)[:, None]
    j_S = jnp.arange(length, dtype=jnp.int32)[None, :]
    if self.kind == "bidirectional":
      mask_BLS = jnp.ones((1, length, length), bool)
    else:
      mask_BLS = (j_S <= i_L)[None]
    if self.kind == "prefix":
      mask_BLS = mask_BLS | (j_S[None] < self.prefix_lengths_B[:, None, None])
    if self.segment_ids_BL is not None:
      seg_BL = self.segment_ids_BL
      if seg_BL.shape[1] != length:
        raise ValueError(f"segment_ids length {seg_BL.shape[1]} != sequence length {length}")
      same_BLS = (seg_BL[:, :, None] == seg_BL[:, None, :]) & (seg_BL[:, None, :] > 0)
      mask_BLS = (mask_BLS & same_BLS) | (i_L == j_S)[None]
    return mask_BLS

  def positions_BL(self, batch: int, length: int):
    """Token positions: 0..L-1, restarting at 0 at every segment start when packed."""
    pos_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if self.segment_ids_BL is None:
      return pos_BL
    seg_BL = self.segment_ids_BL
    start_BL = jnp.concatenate(
        [jnp.ones((batch, 1), bool), seg_BL[:, 1:] != seg_BL[:, :-1]], axis=1)
    first_BL = jax.lax.cummax(jnp.where(start_BL, pos_BL, 0), axis=1)
    return pos_BL - first_BL


def init_cache(config: ModelConfig, batch: int, capacity: int, dtype=None) -> dict:
  """An empty KV cache for `batch` rows of up to `capacity` positions."""
  dtype = dtype or compute_dtype(config)
  shape = (config.n_layers, batch, config.heads_kv, capacity, config.head_dim)
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


def masked_attention(q_BLNH, k_BSKH, v_BSKH, mask_B1LS):
  """GQA attention with an explicit boolean mask (packed, bidirectional, prefix; encoder
  K/V of cross-attention). Always XLA: cuDNN flash attention has no arbitrary mask."""
  return jax.nn.dot_product_attention(
      q_BLNH, k_BSKH, v_BSKH, mask=mask_B1LS, scale=1.0 / np.sqrt(q_BLNH.shape[-1]),
      implementation="xla")


def cached_attention(q_BLNH, k_BKSH, v_BKSH, mask_B1LS):
  """GQA attention of L new queries over a head-major cache slice, float32 softmax.

  Query head n uses kv head n // (N / K), as in jax.nn.dot_product_attention. The
  einsums keep (b, k) as the dots' leading batch dims, matching the cache's layout.
  """
  b, l, n, h = q_BLNH.shape
  k = k_BKSH.shape[1]
  q_BKGLH = q_BLNH.reshape(b, l, k, n // k, h).transpose(0, 2, 3, 1, 4)
  logits_BKGLS = jnp.einsum("bkglh,bksh->bkgls", q_BKGLH, k_BKSH,
                            preferred_element_type=jnp.float32) / np.sqrt(h)
  logits_BKGLS = jnp.where(mask_B1LS[:, :, None], logits_BKGLS,
                           jnp.finfo(jnp.float32).min)
  probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(v_BKSH.dtype)
  out_BKGLH = jnp.einsum("bkgls,bksh->bkglh", probs_BKGLS, v_BKSH)
  return out_BKGLH.transpose(0, 3, 1, 2, 4).reshape(b, l, n, h).astype(q_BLNH.dtype)


def _write_rows(cache, new_BLKH, starts_B, layer=None):
  """Writes each row's new entries at its own offset into one layer's [B, K, S, H] cache,
  or, given `layer`, into that layer of the stacked [n_layers, B, K, S, H] cache (in place:
  only the new rows are written, the stacked cache is never copied)."""
  new_BLKH = new_BLKH.astype(cache.dtype)
  if layer is None:
    update = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (0, s, 0)))
    return update(cache, new_BLKH.transpose(0, 2, 1, 3), starts_B)
  b, l = new_BLKH.shape[:2]
  rows_BL = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, l))
  slots_BL = starts_B[:, None].astype(jnp.int32) + jnp.arange(l, dtype=jnp.int32)
  # Advanced indices split by the K slice: the indexed view is [B, L, K, H], as new_BLKH.
  return cache.at[layer, rows_BL, :, slots_BL].set(new_BLKH, mode="drop")


class Attention(nn.Module):
  """Self-attention under a `Mask`; `kv_cache` is one layer's (k_BKSH, v_BKSH, lengths_B),
  or (k_cache, v_cache, lengths_B, layer) with the stacked all-layer cache, which is then
  updated in place and returned whole.

  With a cache the mask must be causal (optionally prefix-LM) without segments: the new
  tokens attend causally over the cache, and a prefix mask also opens keys j < prefix_len.
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, kv_cache=None, mask: Mask | None = None,
               deterministic: bool = True):
    c = self.config
    dtype = compute_dtype(c)
    n, k, h, d = c.n_heads, c.heads_kv, c.head_dim, c.d_model
    mask = Mask.causal() if mask is None else mask

    def proj(name, shape, names, n_contract, std, bias=c.qkv_bias):
      return Projection(c, self.peft, shape, names, n_contract, std, f"attn.{name}",
                        quant=self.quant, use_bias=bias, name=name)

    q_BLNH = proj("query", (d, n, h), ("embed", "heads", "head_dim"), 1, c.init_std)(
        x_BLD, deterministic)
    k_BLKH = proj("key", (d, k, h), ("embed", "kv_heads", "head_dim"), 1, c.init_std)(
        x_BLD, deterministic)
    v_BLKH = proj("value", (d, k, h), ("embed", "kv_heads", "head_dim"), 1, c.init_std)(
        x_BLD, deterministic)
    if c.pos_encoding == "rope":
      inv_freq = None if c.rope_scaling == "none" else rope_inv_freq(c)
      q_BLNH = apply_rope(q_BLNH, positions_BL, c.rope_theta, inv_freq)
      k_BLKH = apply_rope(k_BLKH, positions_BL, c.rope_theta, inv_freq)
    q_axes = ("act_batch", "act_length", "act_heads", "act_head_dim")
    q_BLNH = sharding.constrain(q_BLNH, q_axes)
    kv_axes = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")
    k_BLKH = sharding.constrain(k_BLKH, kv_axes)
    v_BLKH = sharding.constrain(v_BLKH, kv_axes)

    if kv_cache is None:
      if mask.is_plain_causal:
        out_BLNH = causal_attention(q_BLNH, k_BLKH, v_BLKH, attention_impl(c))
      else:
        mask_BLS = mask.mask_BLS(x_BLD.shape[1])
        out_BLNH = masked_attention(q_BLNH, k_BLKH, v_BLKH, mask_BLS[:, None])
      new_cache = None
    else:
      if mask.kind == "bidirectional" or mask.segment_ids_BL is not None:
        raise ValueError("cached decoding needs a causal (or prefix-LM) mask without "
                         "segment ids; run packed / bidirectional batches without a cache")
      k_cache, v_cache, lengths_B = kv_cache[:3]
      layer = kv_cache[3] if len(kv_cache) > 3 else None
      k_BKSH = k_cache = _write_rows(k_cache, k_BLKH, lengths_B, layer)
      v_BKSH = v_cache = _write_rows(v_cache, v_BLKH, lengths_B, layer)
      if layer is not None:
        k_BKSH = jax.lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False)
        v_BKSH = jax.lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False)
      cache_axes = ("act_batch", "act_kv_heads", "act_cache_length", "act_head_dim")
      k_BKSH = sharding.constrain(k_BKSH, cache_axes)
      v_BKSH = sharding.constrain(v_BKSH, cache_axes)
      capacity = k_BKSH.shape[2]
      mask_B1LS = cache_mask(lengths_B, x_BLD.shape[1], capacity)
      if mask.kind == "prefix":
        prefix_B1LS = (jnp.arange(capacity, dtype=jnp.int32)
                       < mask.prefix_lengths_B[:, None, None, None])
        mask_B1LS = mask_B1LS | prefix_B1LS
      out_BLNH = cached_attention(q_BLNH, k_BKSH.astype(dtype), v_BKSH.astype(dtype),
                                  mask_B1LS)
      new_cache = (k_BKSH, v_BKSH) if layer is None else (k_cache, v_cache)
    out_BLNH = sharding.constrain(out_BLNH, q_axes)
    out = proj("out", (n, h, d), ("heads", "head_dim", "embed"), 2, out_proj_std(c),
               bias=c.out_bias)
    return out(out_BLNH, deterministic), new_cache
