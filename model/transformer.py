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
from model.adapters import Adapter
from model.attention import Attention, Mask
from model.config import ModelConfig, compute_dtype
from model.layers import (Embed, LearnedPositions, Mlp, Norm, Projection, param_init,
                          sinusoidal_positions)
from model.peft import PeftConfig, count_params  # noqa: F401  (count_params re-exported)
from model.quant import QuantConfig
from model.quant_embed import QuantEmbed

_ACT_BLD = ("act_batch", "act_length", "act_embed")
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def group_size(config: ModelConfig) -> int:
  """Blocks per scan step: moe_every for MoE models, 1 for dense ones."""
  return config.moe_every if config.is_moe else 1


def attention_sublayer(block: nn.Module, h_BLD, positions_BL, kv_cache, mask: Mask):
  """Self-attention (+ its adapter) inside `block`'s compact call: (a_BLD, new_kv)."""
  c, peft, det = block.config, block.peft, block.deterministic
  a_BLD, new_kv = Attention(c, peft, block.quant, name="attn")(h_BLD, positions_BL, kv_cache,
                                                               mask, det)
  if peft.adapter_at("attention"):
    a_BLD = Adapter(c, peft, name="adapter_attn")(a_BLD, det)
  return a_BLD, new_kv


def ffn_sublayer(block: nn.Module, h_BLD):
  """The dense or MoE FFN (+ its adapter) inside `block`'s compact call: (f_BLD, aux)."""
  c, peft, det = block.config, block.peft, block.deterministic
  if block.moe:
    from model.moe import MoeMlp  # pylint: disable=g-import-not-at-top
    f_BLD, aux = MoeMlp(c, peft, quant=block.quant, name="moe")(h_BLD, det)
  else:
    f_BLD, aux = Mlp(c, peft, quant=block.quant, name="mlp")(h_BLD, det), {}
  if peft.adapter_at("mlp"):
    f_BLD = Adapter(c, peft, name="adapter_mlp")(f_BLD, det)
  return f_BLD, aux


def residual(config: ModelConfig, norm: nn.Module, sublayer, x_BLD):
  """x + sublayer(norm(x)) (pre-norm) or norm(x + sublayer(x)) (post-norm): (x_BLD, extra)."""
  if config.norm_position == "pre":
    y_BLD, extra = sublayer(norm(x_BLD))
    return x_BLD + y_BLD, extra
  y_BLD, extra = sublayer(x_BLD)
  return norm(x_BLD + y_BLD), extra


class Block(nn.Module):
  """Attention + FFN sub-layers with residuals, pre- or post-norm, optional adapters."""
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  moe: bool = False
  deterministic: bool = True
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask: Mask, kv_cache=None):
    c = self.config
    attn_norm = Norm(c, name="attn_norm")
    mlp_norm = Norm(c, name="mlp_norm")
    x_BLD, new_kv = residual(
        c, attn_norm, lambda h_BLD: attention_sublayer(self, h_BLD, positions_BL, kv_cache, mask),
        x_BLD)
    x_BLD, aux = residual(c, mlp_norm, lambda h_BLD: ffn_sublayer(self, h_BLD), x_BLD)
    return sharding.constrain(x_BLD, _ACT_BLD), aux, new_kv


class BlockGroup(nn.Module):
  """`group_size` blocks: the unit that is scanned and rematerialised.

  Returns (x, aux) or, with a cache, (x, (aux, k_GBKSH, v_GBKSH)); aux is the mean
  of the group's MoE aux losses ({} for dense groups).
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  deterministic: bool = True
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask: Mask, k_GBKSH=None, v_GBKSH=None,
               lengths_B=None):
    c = self.config
    auxes, new_k, new_v = [], [], []
    for i in range(group_size(c)):
      kv = None if k_GBKSH is None else (k_GBKSH[i], v_GBKSH[i], lengths_B)
      block = Block(c, self.peft, moe=c.is_moe_layer(i), deterministic=self.deterministic,
                    quant=self.quant, name=f"block_{i}")
      x_BLD, aux, new_kv = block(x_BLD, positions_BL, mask, kv)
      if aux:
        auxes.append(aux)
      if new_kv is not None:
        new_k.append(new_kv[0])
        new_v.append(new_kv[1])
    aux = {}
    if auxes:
      aux = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a).astype(jnp.float32)), *auxes)
    if k_GBKSH is None:
      return x_BLD, aux
    return x_BLD, (aux, jnp.stack(new_k), jnp.stack(new_v))


def _group_cls(config: ModelConfig):
  if config.remat == "none":
    return BlockGroup
  return nn.remat(BlockGroup, policy=_REMAT_POLICIES[config.remat],
                  prevent_cse=not config.scan_layers)


class CachedBlockGroup(nn.Module):
  """A BlockGroup for cached decoding (same parameters): the whole stacked cache rides in
  the carry and every block writes only its new k/v rows into it, in place.

  Going through scan inputs / outputs instead would copy the full cache several times per
  decode step. `__call__((x_BLD, k_cache, v_cache), positions_BL, mask, lengths_B,
  group_index)` -> ((x_BLD, k_cache, v_cache), aux); caches are [n_layers, B, K, S, H].
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  deterministic: bool = True
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, carry, positions_BL, mask: Mask, lengths_B, group_index):
    c = self.config
    g = group_size(c)
    x_BLD, k_cache, v_cache = carry
    auxes = []
    for i in range(g):
      block = Block(c, self.peft, moe=c.is_moe_layer(i), deterministic=self.deterministic,
                    quant=self.quant, name=f"block_{i}")
      x_BLD, aux, (k_cache, v_cache) = block(x_BLD, positions_BL, mask,
                                             (k_cache, v_cache, lengths_B, group_index * g + i))
      if aux:
        auxes.append(aux)
    aux = {}
    if auxes:
      aux = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a).astype(jnp.float32)), *auxes)
    return (x_BLD, k_cache, v_cache), aux


class Transformer(nn.Module):
  """Decoder-only LM or (model.arch="encoder") bidirectional encoder, optionally with PEFT.

  An encoder uses the same blocks under `Mask.bidirectional()` (the default for mask=None;
  pass Mask.bidirectional(segment_ids_BL) to mask padding, segment 0) and has no cache; its
  logits_BLV are the masked-LM predictions at every position.

  `__call__(tokens_BL, positions_BL=None, cache=None, *, mask=None, prepend_prompt=None,
  deterministic=True)`. Without a cache returns (logits_BLV float32, aux); with one
  returns (logits_BLV, aux, new_cache) where new_cache["lengths"] = cache["lengths"] + L
  (+ P when a soft prompt is prepended). aux holds the mean over MoE layers of each MoE
  aux scalar ({} for dense models).

  mask: a `Mask` (None = plain causal). With packed segment ids and no positions,
  positions restart at 0 at every segment start.
  Prompt tuning: the soft prompt [P, D] is prepended when `prepend_prompt` (default: True
  without a cache; with a cache say True on the prefill, False on decode steps). Real
  tokens then sit at positions P.. (explicit positions_BL are shifted by P) and the P
  prompt positions get no logits, so logits stay [B, L, V].
  deterministic=False enables LoRA dropout (needs a "dropout" rng).
  return_hidden=True (no cache) returns (logits_BLV, aux, hidden_BLD), hidden_BLD the
  final-normed states the logits are read from (reward / value heads use them).
  logits_at_B (int32 [B]): compute logits only at that position of each row, returning
  logits_B1V (a prefill needs just the last prompt token's, not [B, L, V] float32).
  quant (model/quant.py): projections stored as int8 / int4 (scheme) or fake-quantized
  (qat); the embedding table too with quant.include_embed (model/quant_embed.py).
  Params: embed, [pos_embed], [soft_prompt], layers | layers_i, [final_norm], [unembed];
  final_norm exists only for pre-norm (post-norm blocks already end in a norm).
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, cache=None, *, mask: Mask | None = None,
               prepend_prompt: bool | None = None, deterministic: bool = True,
               return_hidden: bool = False, logits_at_B=None):
    c, peft = self.config, self.peft
    if tokens_BL.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens_BL.shape}")
    b, l = tokens_BL.shape
    if c.arch == "encoder":
      mask = _encoder_mask(mask, cache)
    mask = Mask.causal() if mask is None else mask
    if prepend_prompt is None:
      if cache is not None and peft.n_prompt:
        raise ValueError("with prompt tuning and a cache, pass prepend_prompt=True on the "
                         "prefill and prepend_prompt=False on decode steps")
      prepend_prompt = cache is None
    p = peft.n_prompt if prepend_prompt else 0
    if p and mask.segment_ids_BL is not None:
      raise ValueError("prompt tuning needs unpacked rows; set --config.data.pack=false")
    if cache is not None:
      _check_cache(c, cache, b, l + p)
    offset_B1 = (jnp.zeros((b, 1), jnp.int32) if cache is None
                 else cache["lengths"][:, None].astype(jnp.int32))
    # Default positions without packing or a cache are 0..L-1 in every row (see LearnedPositions).
    contiguous = positions_BL is None and mask.segment_ids_BL is None and cache is None
    if positions_BL is None:
      positions_BL = mask.positions_BL(b, l) + offset_B1
    elif positions_BL.shape != (b, l):
      raise ValueError(f"positions shape {positions_BL.shape} must equal tokens shape {(b, l)}")
    if c.pos_encoding == "learned" and cache is None and l + p > c.max_len:
      raise ValueError(f"sequence length {l}{f' + soft prompt {p}' if p else ''} exceeds "
                       f"model.max_len={c.max_len} of the learned position table; raise "
                       "--config.model.max_len")

    embed = (QuantEmbed(c, self.quant, name="embed") if self.quant.applies("embed")
             else Embed(c, name="embed"))
    x_BLD = embed(tokens_BL)
    if peft.n_prompt:
      prompt_PD = self._soft_prompt(embed)
    if p:
      prompt_BPD = jnp.broadcast_to(prompt_PD.astype(x_BLD.dtype)[None], (b, p, c.d_model))
      x_BLD = jnp.concatenate([prompt_BPD, x_BLD], axis=1)
      prompt_pos_BP = offset_B1 + jnp.arange(p, dtype=jnp.int32)
      positions_BL = jnp.concatenate([prompt_pos_BP, positions_BL + p], axis=1)
      if mask.kind == "prefix":
        mask = Mask.prefix(mask.prefix_lengths_B + p)
    if c.pos_encoding == "learned":
      x_BLD = x_BLD + LearnedPositions(c, name="pos_embed")(positions_BL, contiguous)
    elif c.pos_encoding == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_positions(positions_BL, c.d_model).astype(compute_dtype(c))
    x_BLD = sharding.constrain(x_BLD, _ACT_BLD)

    x_BLD, aux, new_kv = self._layers(x_BLD, positions_BL, mask, cache, deterministic)
    x_BLD = x_BLD[:, p:]
    if logits_at_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_B[:, None, None].astype(jnp.int32), axis=1)

    if c.norm_position == "pre":
      x_BLD = Norm(c, name="final_norm")(x_BLD)
    if c.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      head = Projection(c, peft, (c.d_model, c.vocab_size), ("embed", "vocab"), 1,
                        c.init_std, "head", out_dtype=jnp.float32, quant=self.quant,
                        name="unembed")
      logits_BLV = head(x_BLD, deterministic)
    logits_BLV = sharding.constrain(logits_BLV, ("act_batch", "act_length", "act_vocab"))
    if return_hidden:  # final hidden states for scalar heads (model/reward_head.py)
      if cache is not None:
        raise ValueError("return_hidden is for full forward passes, not cached decoding")
      return logits_BLV, aux, x_BLD
    if cache is None:
      return logits_BLV, aux
    new_cache = {"k": new_kv[0], "v": new_kv[1], "lengths": cache["lengths"] + l + p}
    return logits_BLV, aux, new_cache

  def _soft_prompt(self, embed: Embed):
    """The [P, D] soft prompt; "vocab" init copies rows of this model's embedding table
    (after grafting a base, re-initialise with peft.soft_prompt_from_vocab)."""
    c, peft = self.config, self.peft
    names = ("soft_prompt", "embed")
    if peft.prompt_init == "vocab":
      table_VD = embed.embedding

      def init(rng, shape, dtype):
        ids_P = jax.random.randint(rng, shape[:1], 0, c.vocab_size)
        return jnp.take(table_VD, ids_P, axis=0).astype(dtype)
      init = nn.with_logical_partitioning(init, names)
    else:
      init = param_init(c.init_std, names)
    return self.param("soft_prompt", init, (peft.n_prompt, c.d_model), jnp.float32)

  def _layers(self, x_BLD, positions_BL, mask, cache, deterministic):
    """Runs all groups; returns (x, aux averaged over groups, (k, v) or None)."""
    c, peft = self.config, self.peft
    n_groups = c.n_layers // group_size(c)
    if cache is None:
      group_cls, carry, args = _group_cls(c), x_BLD, (positions_BL, mask)
    else:  # the cache is carried and updated in place (CachedBlockGroup)
      group_cls, carry = CachedBlockGroup, (x_BLD, cache["k"], cache["v"])
      args = (positions_BL, mask, cache["lengths"])

    if c.scan_layers:
      in_axes = (nn.broadcast,) * len(args)
      if cache is not None:
        in_axes, args = in_axes + (0,), args + (jnp.arange(n_groups, dtype=jnp.int32),)
      split_rngs = {"params": True}
      if not deterministic and peft.method == "lora" and peft.dropout > 0:
        split_rngs["dropout"] = True  # a fresh dropout mask per layer
      scanned = nn.scan(
          group_cls, variable_axes={"params": 0, "intermediates": 0},
          split_rngs=split_rngs, in_axes=in_axes, length=n_groups,
          metadata_params={nn.PARTITION_NAME: "layers"})
      carry, aux = scanned(c, peft, deterministic, self.quant, name="layers")(carry, *args)
    else:
      outs = []
      for i in range(n_groups):
        group = group_cls(c, peft, deterministic, self.quant, name=f"layers_{i}")
        carry, y = group(carry, *args, *(() if cache is None else (i,)))
        outs.append(y)
      aux = jax.tree.map(lambda *a: jnp.stack(a), *outs)

    aux = jax.tree.map(jnp.mean, aux)
    if cache is None:
      return carry, aux, None
    x_BLD, k_cache, v_cache = carry
    return x_BLD, aux, (k_cache, v_cache)


def _encoder_mask(mask: Mask | None, cache) -> Mask:
  """An encoder-only model sees every (non-padding) token: bidirectional, never cached."""
  if cache is not None:
    raise ValueError("an encoder-only model (model.arch=encoder) has no KV cache and does not "
                     "generate text; use it for masked-LM, classification or embeddings "
                     "(python -m infer.embed), or train a decoder / encoder_decoder run")
  if mask is None:
    return Mask.bidirectional()
  if mask.kind != "bidirectional":
    raise ValueError(f"an encoder-only model takes a bidirectional mask, got {mask.kind!r}; "
                     "pass Mask.bidirectional(segment_ids_BL) (0 = padding)")
  return mask


def _check_cache(config: ModelConfig, cache, batch: int, length: int) -> None:
  if not isinstance(cache, dict) or set(cache) != {"k", "v", "lengths"}:
    raise ValueError("cache must be the dict from model.attention.init_cache "
                     "with keys 'k', 'v', 'lengths'")
  want = (config.n_layers, batch, config.heads_kv, config.head_dim)
  k = cache["k"].shape
  if len(k) != 5 or (k[0], k[1], k[2], k[4]) != want or cache["v"].shape != k:
    raise ValueError(f"cache k/v shape {k} does not match [n_layers, batch, kv_heads, "
                     f"capacity, head_dim] = {want[:3] + ('S',) + want[3:]}; "
                     "build it with init_cache(config, batch, capacity)")
  if length > k[3]:
    raise ValueError(f"{length} new tokens do not fit a cache of capacity {k[3]}; "
                     "build a larger one with init_cache(config, batch, capacity)")
  if cache["lengths"].shape != (batch,):
    raise ValueError(f"cache lengths shape {cache['lengths'].shape} must be ({batch},)")


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
