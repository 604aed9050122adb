"""The decoder-only transformer: embeddings, scanned (or looped) blocks, output logits.

Layers run in groups of `moe_every` blocks (one block for dense models); block i of a
group uses the MoE FFN iff `config.is_moe_layer(i)`. With `scan_layers` the groups run
under `nn.scan` (params stacked on a leading "layers" axis under `params["layers"]`),
otherwise as a Python loop (`params["layers_0"]`, `params["layers_1"]`, ...); the
helpers `stack_layer_params` / `unstack_layer_params` convert between the two.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import sharding
from model.attention import Attention
from model.config import ModelConfig, compute_dtype
from model.layers import (Embed, LearnedPositions, Mlp, Norm, Unembed,
                          sinusoidal_positions)

_ACT_BLD = ("act_batch", "act_length", "act_embed")
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def group_size(config: ModelConfig) -> int:
  """Blocks per scan step: moe_every for MoE models, 1 for dense ones."""
  return config.moe_every if config.is_moe else 1


class Block(nn.Module):
  """Attention + FFN sub-layers with residuals, pre- or post-norm."""
  config: ModelConfig
  moe: bool = False

  @nn.compact
  def __call__(self, x_BLD, positions_BL, kv_cache=None):
    c = self.config
    attn = Attention(c, name="attn")
    attn_norm = Norm(c, name="attn_norm")
    mlp_norm = Norm(c, name="mlp_norm")

    def ffn(h_BLD):
      if self.moe:
        from model.moe import MoeMlp  # pylint: disable=g-import-not-at-top
        return MoeMlp(c, name="moe")(h_BLD)
      return Mlp(c, name="mlp")(h_BLD), {}

    if c.norm_position == "pre":
      a_BLD, new_kv = attn(attn_norm(x_BLD), positions_BL, kv_cache)
      x_BLD = x_BLD + a_BLD
      f_BLD, aux = ffn(mlp_norm(x_BLD))
      x_BLD = x_BLD + f_BLD
    else:
      a_BLD, new_kv = attn(x_BLD, positions_BL, kv_cache)
      x_BLD = attn_norm(x_BLD + a_BLD)
      f_BLD, aux = ffn(x_BLD)
      x_BLD = mlp_norm(x_BLD + f_BLD)
    return sharding.constrain(x_BLD, _ACT_BLD), aux, new_kv


class BlockGroup(nn.Module):
  """`group_size` blocks: the unit that is scanned and rematerialised.

  Returns (x, aux) or, with a cache, (x, (aux, k_GBSKH, v_GBSKH)); aux is the mean
  of the group's MoE aux losses ({} for dense groups).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, k_GBSKH=None, v_GBSKH=None, lengths_B=None):
    c = self.config
    auxes, new_k, new_v = [], [], []
    for i in range(group_size(c)):
      kv = None if k_GBSKH is None else (k_GBSKH[i], v_GBSKH[i], lengths_B)
      x_BLD, aux, new_kv = Block(c, moe=c.is_moe_layer(i), name=f"block_{i}")(
          x_BLD, positions_BL, kv)
      if aux:
        auxes.append(aux)
      if new_kv is not None:
        new_k.append(new_kv[0])
        new_v.append(new_kv[1])
    aux = {}
    if auxes:
      aux = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a).astype(jnp.float32)), *auxes)
    if k_GBSKH is None:
      return x_BLD, aux
    return x_BLD, (aux, jnp.stack(new_k), jnp.stack(new_v))


def _group_cls(config: ModelConfig):
  if config.remat == "none":
    return BlockGroup
  return nn.remat(BlockGroup, policy=_REMAT_POLICIES[config.remat],
                  prevent_cse=not config.scan_layers)


class Transformer(nn.Module):
  """Decoder-only LM. `__call__(tokens_BL, positions_BL=None, cache=None)`.

  Without a cache returns (logits_BLV float32, aux); with one returns
  (logits_BLV, aux, new_cache) where new_cache["lengths"] = cache["lengths"] + L.
  aux holds the mean over MoE layers of each MoE aux scalar ({} for dense models).
  Params: embed, [pos_embed], layers | layers_i, [final_norm], [unembed]; final_norm
  exists only for pre-norm (post-norm blocks already end in a norm).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, cache=None):
    c = self.config
    if tokens_BL.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens_BL.shape}")
    b, l = tokens_BL.shape
    if cache is not None:
      _check_cache(c, cache, b, l)
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
      if cache is not None:
        positions_BL = positions_BL + cache["lengths"][:, None]
    elif positions_BL.shape != (b, l):
      raise ValueError(f"positions shape {positions_BL.shape} must equal tokens shape {(b, l)}")
    if c.pos_encoding == "learned" and cache is None and l > c.max_len:
      raise ValueError(f"sequence length {l} exceeds model.max_len={c.max_len} of the "
                       "learned position table; raise --config.model.max_len")

    embed = Embed(c, name="embed")
    x_BLD = embed(tokens_BL)
    if c.pos_encoding == "learned":
      x_BLD = x_BLD + LearnedPositions(c, name="pos_embed")(positions_BL)
    elif c.pos_encoding == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_positions(positions_BL, c.d_model).astype(compute_dtype(c))
    x_BLD = sharding.constrain(x_BLD, _ACT_BLD)

    x_BLD, aux, new_kv = self._layers(x_BLD, positions_BL, cache)

    if c.norm_position == "pre":
      x_BLD = Norm(c, name="final_norm")(x_BLD)
    if c.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = Unembed(c, name="unembed")(x_BLD)
    logits_BLV = sharding.constrain(logits_BLV, ("act_batch", "act_length", "act_vocab"))
    if cache is None:
      return logits_BLV, aux
    new_cache = {"k": new_kv[0], "v": new_kv[1], "lengths": cache["lengths"] + l}
    return logits_BLV, aux, new_cache

  def _layers(self, x_BLD, positions_BL, cache):
    """Runs all groups; returns (x, aux averaged over groups, (k, v) or None)."""
    c = self.config
    g = group_size(c)
    n_groups = c.n_layers // g
    group_cls = _group_cls(c)
    cache_args = ()
    if cache is not None:
      split = lambda a: a.reshape((n_groups, g) + a.shape[1:])
      cache_args = (split(cache["k"]), split(cache["v"]), cache["lengths"])

    if c.scan_layers:
      in_axes = (nn.broadcast,) + ((0, 0, nn.broadcast) if cache is not None else ())
      scanned = nn.scan(
          group_cls, variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True}, in_axes=in_axes, length=n_groups,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x_BLD, ys = scanned(c, name="layers")(x_BLD, positions_BL, *cache_args)
    else:
      outs = []
      for i in range(n_groups):
        args = () if cache is None else (cache_args[0][i], cache_args[1][i], cache_args[2])
        x_BLD, y = group_cls(c, name=f"layers_{i}")(x_BLD, positions_BL, *args)
        outs.append(y)
      ys = jax.tree.map(lambda *a: jnp.stack(a), *outs)

    aux, kv = (ys, None) if cache is None else (ys[0], ys[1:])
    aux = jax.tree.map(jnp.mean, aux)
    if kv is not None:
      merge = lambda a: a.reshape((c.n_layers,) + a.shape[2:])
      kv = (merge(kv[0]), merge(kv[1]))
    return x_BLD, aux, kv


def _check_cache(config: ModelConfig, cache, batch: int, length: int) -> None:
  if not isinstance(cache, dict) or set(cache) != {"k", "v", "lengths"}:
    raise ValueError("cache must be the dict from model.attention.init_cache "
                     "with keys 'k', 'v', 'lengths'")
  want = (config.n_layers, batch, config.heads_kv, config.head_dim)
  k = cache["k"].shape
  if len(k) != 5 or (k[0], k[1], k[3], k[4]) != want or cache["v"].shape != k:
    raise ValueError(f"cache k/v shape {k} does not match [n_layers, batch, capacity, "
                     f"kv_heads, head_dim] = {want[:2] + ('S',) + want[2:]}; "
                     "build it with init_cache(config, batch, capacity)")
  if length > k[2]:
    raise ValueError(f"{length} new tokens do not fit a cache of capacity {k[2]}; "
                     "build a larger one with init_cache(config, batch, capacity)")
  if cache["lengths"].shape != (batch,):
    raise ValueError(f"cache lengths shape {cache['lengths'].shape} must be ({batch},)")


def count_params(params) -> int:
  """Number of scalars in a (possibly boxed) parameter pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))


def unstack_layer_params(params: dict, config: ModelConfig) -> dict:
  """Scanned layout (params["layers"] stacked) -> looped layout (params["layers_i"])."""
  params = dict(nn.meta.unbox(params))
  stacked = params.pop("layers")
  for i in range(config.n_layers // group_size(config)):
    params[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return params


def stack_layer_params(params: dict, config: ModelConfig) -> dict:
  """Looped layout (params["layers_i"]) -> scanned layout (params["layers"] stacked)."""
  params = dict(nn.meta.unbox(params))
  groups = [params.pop(f"layers_{i}") for i in range(config.n_layers // group_size(config))]
  params["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *groups)
  return params
