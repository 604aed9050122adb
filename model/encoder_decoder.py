"""The encoder-decoder transformer (the original Transformer / T5 layout).

The encoder is the decoder-only model's `BlockGroup` stack under a bidirectional `Mask`
(padding masked by segment ids); the decoder's blocks add cross-attention
(model/cross_attention.py) between causal self-attention and the FFN (dense or MoE).
Both stacks are scanned (`nn.scan`, params stacked under ".../layers") or looped, with
the configured remat policy. The token embedding is shared by encoder, decoder and (when
tied) the output layer; each stack has its own position table when positions are learned.

  __call__(tokens_BL, positions_BL=None, cache=None, *, source_BS=None,
           source_valid_BS=None, deterministic=True, prepend_prompt=None)

`tokens_BL` are decoder inputs (a start token, then the target shifted right). Without a
cache: encodes `source_BS` and returns (logits_BLV float32, aux). With a cache (the
self-attention dict of `model.attention.init_cache`) and `source_BS`: encodes once, adds
the per-layer cross-attention K/V and the source mask to the cache ("cross_k", "cross_v"
[n_layers, B, S, K, H], "source_valid" [B, S]) and returns (logits, aux, cache); later
calls with that cache (no source) reuse them, so one jitted decode step serves every
sampler, beam search and best-of-N. `prepend_prompt` is accepted for the decoder-only
call signature and must not ask for a soft prompt (prompt tuning is decoder-only).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import sharding
from model.attention import Mask
from model.attention import cache_logical_axes as attention_cache_axes
from model.config import ModelConfig, compute_dtype
from model.cross_attention import CrossAttention
from model.layers import Embed, LearnedPositions, Norm, Projection, sinusoidal_positions
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.transformer import (_REMAT_POLICIES, BlockGroup, attention_sublayer, ffn_sublayer,
                               group_size, residual)

_ACT_BLD = ("act_batch", "act_length", "act_embed")
CROSS_KEYS = ("cross_k", "cross_v", "source_valid")
# The decoder's first input, as in T5: id 0 (sentencepiece's pad, the byte tokenizer's NUL
# byte), which never occurs inside text, so decoding needs no tokenizer to start.
DECODER_START_ID = 0
_CROSS_AXES = ("layers", "act_batch", "act_cache_length", "act_kv_heads", "act_head_dim")


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention to the encoder output, FFN; each with a residual.

  Returns (x_BLD, aux, new_self_kv or None, (cross_k, cross_v)).
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  moe: bool = False
  deterministic: bool = True
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask: Mask, source_valid_BS, encoded_BSD,
               kv_cache=None, cross_kv=None):
    c = self.config
    attn_norm, cross_norm, mlp_norm = (Norm(c, name=n)
                                       for n in ("attn_norm", "cross_norm", "mlp_norm"))

    def cross_attn(h_BLD):
      return CrossAttention(c, self.peft, self.quant, name="cross_attn")(
          h_BLD, source_valid_BS, None if cross_kv is not None else encoded_BSD, cross_kv,
          self.deterministic)

    x_BLD, new_kv = residual(
        c, attn_norm, lambda h_BLD: attention_sublayer(self, h_BLD, positions_BL, kv_cache, mask),
        x_BLD)
    x_BLD, cross = residual(c, cross_norm, cross_attn, x_BLD)
    x_BLD, aux = residual(c, mlp_norm, lambda h_BLD: ffn_sublayer(self, h_BLD), x_BLD)
    return sharding.constrain(x_BLD, _ACT_BLD), aux, new_kv, cross


class DecoderGroup(nn.Module):
  """`group_size` decoder blocks: the scanned / rematerialised unit.

  Returns (x, aux) without a cache, else (x, (aux, k_G, v_G, cross_k_G, cross_v_G)).
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  deterministic: bool = True
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask, source_valid_BS, encoded_BSD, k_GBKSH=None,
               v_GBKSH=None, lengths_B=None, ck_GBSKH=None, cv_GBSKH=None):
    c = self.config
    auxes, outs = [], []
    for i in range(group_size(c)):
      kv = None if k_GBKSH is None else (k_GBKSH[i], v_GBKSH[i], lengths_B)
      cross_kv = None if ck_GBSKH is None else (ck_GBSKH[i], cv_GBSKH[i])
      block = DecoderBlock(c, self.peft, moe=c.is_moe_layer(i),
                           deterministic=self.deterministic, quant=self.quant,
                           name=f"block_{i}")
      x_BLD, aux, new_kv, cross = block(x_BLD, positions_BL, mask, source_valid_BS,
                                        encoded_BSD, kv, cross_kv)
      if aux:
        auxes.append(aux)
      if new_kv is not None:
        outs.append(new_kv + cross)
    aux = {}
    if auxes:
      aux = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a).astype(jnp.float32)), *auxes)
    if k_GBKSH is None:
      return x_BLD, aux
    return x_BLD, (aux,) + tuple(jnp.stack(parts) for parts in zip(*outs))


def _remat(cls, config: ModelConfig):
  if config.remat == "none":
    return cls
  return nn.remat(cls, policy=_REMAT_POLICIES[config.remat],
                  prevent_cse=not config.scan_layers)


def _run_stack(cls, name: str, config, peft, quant, deterministic, carry, args: tuple,
               per_group: tuple = ()):
  """Runs n_layers / group_size groups of `cls`, scanned or looped (call inside a compact
  method). `args` follow the carry; those whose index is in `per_group` have a leading
  group axis (cache slices), the others are the same for every group. Returns (carry,
  per-group outputs stacked on a leading axis)."""
  n_groups = config.n_layers // group_size(config)
  group_cls = _remat(cls, config)
  if config.scan_layers:
    in_axes = tuple(0 if i in per_group else nn.broadcast for i in range(len(args)))
    split_rngs = {"params": True}
    if not deterministic and peft.method == "lora" and peft.dropout > 0:
      split_rngs["dropout"] = True
    scanned = nn.scan(group_cls, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs=split_rngs, in_axes=in_axes, length=n_groups,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(config, peft, deterministic, quant, name=name)(carry, *args)
  outs = []
  for i in range(n_groups):
    group = group_cls(config, peft, deterministic, quant, name=f"{name}_{i}")
    carry, y = group(carry, *(a[i] if j in per_group else a for j, a in enumerate(args)))
    outs.append(y)
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *outs)


class Encoder(nn.Module):
  """The bidirectional stack: `BlockGroup`s under a padding-aware bidirectional Mask."""
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BSD, positions_BS, source_valid_BS, deterministic: bool = True):
    c = self.config
    mask = Mask.bidirectional(source_valid_BS.astype(jnp.int32))
    x_BSD, aux = _run_stack(BlockGroup, "layers", c, self.peft, self.quant, deterministic,
                            x_BSD, (positions_BS, mask))
    if c.norm_position == "pre":
      x_BSD = Norm(c, name="final_norm")(x_BSD)
    return x_BSD, jax.tree.map(jnp.mean, aux)


class DecoderStack(nn.Module):
  """The causal stack with cross-attention; returns (x, aux, cache parts or None)."""
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, positions_BL, source_valid_BS, encoded_BSD, cache=None,
               deterministic: bool = True):
    c = self.config
    causal = Mask.causal()
    run = lambda args, per_group=(): _run_stack(DecoderGroup, "layers", c, self.peft,
                                                self.quant, deterministic, x_BLD, args,
                                                per_group)
    parts = None
    if cache is None:
      x_BLD, aux = run((positions_BL, causal, source_valid_BS, encoded_BSD))
    else:
      # Group args: positions, mask, source_valid, encoded, k, v, lengths, [cross_k, cross_v].
      args = (positions_BL, causal, source_valid_BS, encoded_BSD,
              _split_groups(c, cache["k"]), _split_groups(c, cache["v"]), cache["lengths"])
      per_group = (4, 5)
      if "cross_k" in cache:
        args = args[:3] + (None,) + args[4:] + (_split_groups(c, cache["cross_k"]),
                                                _split_groups(c, cache["cross_v"]))
        per_group = (4, 5, 7, 8)
      x_BLD, ys = run(args, per_group)
      aux = ys[0]
      parts = tuple(_merge_groups(c, y) for y in ys[1:])
    if c.norm_position == "pre":
      x_BLD = Norm(c, name="final_norm")(x_BLD)
    return x_BLD, jax.tree.map(jnp.mean, aux), parts


def _split_groups(config: ModelConfig, x):
  g = group_size(config)
  return x.reshape((config.n_layers // g, g) + x.shape[1:])


def _merge_groups(config: ModelConfig, x):
  return x.reshape((config.n_layers,) + x.shape[2:])


class EncoderDecoder(nn.Module):
  """Encoder-decoder LM (see module doc). Params: embed, [encoder_pos_embed, pos_embed],
  encoder/{layers | layers_i, [final_norm]}, decoder/{layers | layers_i, [final_norm]},
  [unembed]."""
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  def setup(self):
    c = self.config
    if c.arch != "encoder_decoder":
      raise ValueError(f"EncoderDecoder needs model.arch='encoder_decoder', got {c.arch!r}")
    if self.peft.n_prompt:
      raise ValueError("prompt tuning is for decoder-only models; use LoRA or adapters on an "
                       "encoder-decoder (--config.peft.method=lora)")
    self.embed = Embed(c, name="embed")
    if c.pos_encoding == "learned":
      self.encoder_pos_embed = LearnedPositions(c, name="encoder_pos_embed")
      self.pos_embed = LearnedPositions(c, name="pos_embed")
    self.encoder = Encoder(c, self.peft, self.quant, name="encoder")
    self.decoder = DecoderStack(c, self.peft, self.quant, name="decoder")
    if not c.tie_embeddings:
      self.unembed = Projection(c, self.peft, (c.d_model, c.vocab_size), ("embed", "vocab"),
                                1, c.init_std, "head", out_dtype=jnp.float32,
                                quant=self.quant, name="unembed")

  def _embed(self, tokens_BL, positions_BL, table):
    c = self.config
    x_BLD = self.embed(tokens_BL)
    if c.pos_encoding == "learned":
      if tokens_BL.shape[1] > c.max_len:
        raise ValueError(f"sequence length {tokens_BL.shape[1]} exceeds model.max_len="
                         f"{c.max_len} of the learned position table; raise "
                         "--config.model.max_len")
      x_BLD = x_BLD + table(positions_BL)
    elif c.pos_encoding == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_positions(positions_BL, c.d_model).astype(compute_dtype(c))
    return sharding.constrain(x_BLD, _ACT_BLD)

  def encode(self, source_BS, source_valid_BS=None, deterministic: bool = True):
    """Encoder output [B, S, D] (final-normed); padding positions are masked out."""
    c = self.config
    if source_BS.ndim != 2:
      raise ValueError(f"source must be [batch, length], got shape {source_BS.shape}")
    b, s = source_BS.shape
    if source_valid_BS is None:
      source_valid_BS = jnp.ones((b, s), bool)
    positions_BS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    x_BSD = self._embed(source_BS, positions_BS,
                        self.encoder_pos_embed if c.pos_encoding == "learned" else None)
    return self.encoder(x_BSD, positions_BS, source_valid_BS.astype(bool), deterministic)

  def __call__(self, tokens_BL, positions_BL=None, cache=None, *, source_BS=None,
               source_valid_BS=None, deterministic: bool = True,
               prepend_prompt: bool | None = None, mask: Mask | None = None):
    c = self.config
    if prepend_prompt:
      raise ValueError("an encoder-decoder has no soft prompt to prepend")
    if mask is not None and not mask.is_plain_causal:
      raise ValueError("the decoder of an encoder-decoder is causal; pad targets at the end "
                       "instead of packing them")
    if tokens_BL.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens_BL.shape}")
    b, l = tokens_BL.shape
    cached_cross = cache is not None and "cross_k" in cache
    if cached_cross == (source_BS is not None):
      raise ValueError("give source_BS to encode a source, or a cache that already holds "
                       "its cross-attention keys/values (from a call with source_BS), not "
                       "both or neither")
    aux_enc, encoded_BSD = {}, None
    if source_BS is not None:
      if source_valid_BS is None:
        source_valid_BS = jnp.ones(source_BS.shape, bool)
      source_valid_BS = source_valid_BS.astype(bool)
      encoded_BSD, aux_enc = self.encode(source_BS, source_valid_BS, deterministic)
    else:
      source_valid_BS = cache["source_valid"]

    offset_B1 = (jnp.zeros((b, 1), jnp.int32) if cache is None
                 else cache["lengths"][:, None].astype(jnp.int32))
    if positions_BL is None:
      positions_BL = jnp.arange(l, dtype=jnp.int32)[None] + offset_B1
    x_BLD = self._embed(tokens_BL, positions_BL,
                        self.pos_embed if c.pos_encoding == "learned" else None)
    x_BLD, aux, parts = self.decoder(x_BLD, positions_BL, source_valid_BS, encoded_BSD,
                                     cache, deterministic)
    if aux_enc:
      aux = jax.tree.map(lambda a, e: (a + e) / 2, aux, aux_enc)
    if c.tie_embeddings:
      logits_BLV = self.embed.attend(x_BLD)
    else:
      logits_BLV = self.unembed(x_BLD, deterministic)
    logits_BLV = sharding.constrain(logits_BLV, ("act_batch", "act_length", "act_vocab"))
    if cache is None:
      return logits_BLV, aux
    new_k, new_v, cross_k, cross_v = parts
    new_cache = {"k": new_k, "v": new_v, "lengths": cache["lengths"] + l,
                 "cross_k": cross_k, "cross_v": cross_v, "source_valid": source_valid_BS}
    return logits_BLV, aux, new_cache


def cache_batch_axes(cache: dict) -> dict:
  """Which axis of each cache entry is the batch (for beam search's reordering)."""
  return {name: (0 if name in ("lengths", "source_valid") else 1) for name in cache}


def cache_logical_axes() -> dict:
  """Logical axis names of the full encoder-decoder cache (for sharding.logical_spec)."""
  self_axes = attention_cache_axes(None)
  return {"k": self_axes["k"], "v": self_axes["v"], "cross_k": _CROSS_AXES,
          "cross_v": _CROSS_AXES,
          "lengths": ("act_batch",), "source_valid": ("act_batch", "act_length")}




def make_model(config: ModelConfig, peft: PeftConfig = PeftConfig(),
               quant: QuantConfig = QuantConfig()) -> nn.Module:
  """The module for `config.arch`: EncoderDecoder, else the Transformer (decoder/encoder)."""
  if config.arch == "encoder_decoder":
    return EncoderDecoder(config, peft, quant)
  from model.transformer import Transformer  # pylint: disable=g-import-not-at-top
  return Transformer(config, peft, quant)


def init_params(model: nn.Module, rng, tokens_BL):
  """`model.init(...)["params"]` for either module kind (a source as long as the tokens)."""
  if isinstance(model, EncoderDecoder):
    return model.init(rng, tokens_BL, source_BS=tokens_BL)["params"]
  return model.init(rng, tokens_BL)["params"]
