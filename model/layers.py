"""Building blocks of the transformer: norms, embeddings, positions and the FFN.

Parameters are float32 and carry logical axis names (model/sharding.py); compute runs
in `compute_dtype(config)`, while norms and logits are computed in float32.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import sharding
from model.config import ModelConfig, compute_dtype


def param_init(std: float, names: tuple):
  """Truncation-free normal init carrying logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def out_proj_std(config: ModelConfig) -> float:
  """Residual-branch output projections start smaller (GPT-2): std / sqrt(2 * n_layers)."""
  return config.init_std / math.sqrt(2 * config.n_layers)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True)
                              + self.config.norm_eps)
    return (x32 * scale).astype(compute_dtype(self.config))


class LayerNorm(nn.Module):
  """(x - mean) / std * scale + bias, computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (d,), jnp.float32)
    bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        (d,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    x32 = (x32 - mean) * jax.lax.rsqrt(var + self.config.norm_eps)
    return (x32 * scale + bias).astype(compute_dtype(self.config))


def Norm(config: ModelConfig, name: str | None = None) -> nn.Module:  # noqa: N802
  """The norm chosen by config.norm ("rms" or "layer")."""
  cls = RMSNorm if config.norm == "rms" else LayerNorm
  return cls(config, name=name)


class Embed(nn.Module):
  """Token embedding; `attend` is the tied output projection (float32 logits)."""
  config: ModelConfig

  def setup(self):
    c = self.config
    self.embedding = self.param(
        "embedding", param_init(c.init_std, ("vocab", "embed")),
        (c.vocab_size, c.d_model), jnp.float32)

  def __call__(self, tokens_BL):
    # Gather from a table whose embed dim is all-gathered (as FSDP does for every
    # weight): gathering rows of an fsdp-sharded table yields an embed-sharded
    # activation that GSPMD can only reshard to batch-sharded by replicating it.
    table_VD = sharding.constrain(self.embedding, ("vocab", None))
    x_BLD = jnp.take(table_VD, tokens_BL, axis=0)
    return x_BLD.astype(compute_dtype(self.config))

  def attend(self, x_BLD):
    w_VD = self.embedding.astype(compute_dtype(self.config))
    return jnp.einsum("bld,vd->blv", x_BLD, w_VD, preferred_element_type=jnp.float32)


class Unembed(nn.Module):
  """Untied output projection to the vocabulary (float32 logits)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    c = self.config
    w_DV = self.param("kernel", param_init(c.init_std, ("embed", "vocab")),
                      (c.d_model, c.vocab_size), jnp.float32)
    return jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(compute_dtype(c)),
                      preferred_element_type=jnp.float32)


class LearnedPositions(nn.Module):
  """A learned [max_len, d_model] table looked up by absolute position."""
  config: ModelConfig

  @nn.compact
  def __call__(self, positions_BL):
    c = self.config
    table = self.param("embedding", param_init(c.init_std, ("position", "embed")),
                       (c.max_len, c.d_model), jnp.float32)
    table = sharding.constrain(table, ("position", None))  # See Embed.__call__.
    return jnp.take(table, positions_BL, axis=0).astype(compute_dtype(c))


def sinusoidal_positions(positions_BL, d_model: int, max_timescale: float = 10_000.0):
  """Fixed sin/cos absolute position embeddings [B, L, d_model] (Vaswani et al.), float32."""
  half = d_model // 2
  inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / max(half, 1))
  angles_BLh = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([jnp.sin(angles_BLh), jnp.cos(angles_BLh)], axis=-1)
  if d_model % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


def apply_rope(x_BLNH, positions_BL, theta: float):
  """Rotary position embedding (rotate-half form) applied in float32."""
  h = x_BLNH.shape[-1]
  if h % 2:
    raise ValueError(f"rotary embeddings need an even head dim, got {h}")
  inv_freq = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angles_BLh = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  sin = jnp.sin(angles_BLh)[:, :, None, :]
  cos = jnp.cos(angles_BLh)[:, :, None, :]
  x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLNH.dtype)


def _activation(name: str):
  return {"gelu": nn.gelu, "relu": nn.relu, "swiglu": nn.silu}[name]


class Mlp(nn.Module):
  """Position-wise FFN: swiglu (silu(x wi_gate) * x wi_up) wo, or act(x wi) wo for gelu / relu.

  Parameter names match MoeMlp's experts (model/moe.py); `width` overrides config.ffw_dim.
  """
  config: ModelConfig
  width: int = 0

  @nn.compact
  def __call__(self, x_BLD):
    c = self.config
    f = self.width or c.ffw_dim
    dtype = compute_dtype(c)
    act = _activation(c.activation)

    def kernel(name, shape, names, std):
      return self.param(name, param_init(std, names), shape, jnp.float32).astype(dtype)

    gated = c.activation == "swiglu"
    w_in = kernel("wi_gate" if gated else "wi", (c.d_model, f), ("embed", "mlp"), c.init_std)
    h_BLF = act(jnp.einsum("bld,df->blf", x_BLD, w_in))
    if gated:
      w_up = kernel("wi_up", (c.d_model, f), ("embed", "mlp"), c.init_std)
      h_BLF = h_BLF * jnp.einsum("bld,df->blf", x_BLD, w_up)
    h_BLF = sharding.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    w_out = kernel("wo", (f, c.d_model), ("mlp", "embed"), out_proj_std(c))
    return jnp.einsum("blf,fd->bld", h_BLF, w_out)
