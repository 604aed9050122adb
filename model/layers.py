"""Building blocks of the transformer: the projection, norms, embeddings, positions, FFN.

Parameters are float32 and carry logical axis names (model/sharding.py); compute runs
in `compute_dtype(config)`, while norms and logits are computed in float32. Every dense
projection is a `Projection`, the one place where LoRA and quantization (model/quant.py)
plug in.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import sharding
from model.config import ModelConfig, compute_dtype
from model.peft import PeftConfig, lora_delta
from model.quant import QuantConfig, dequantize, fake_quant, quantized_shapes


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


def _contract(x, w, n_contract: int, out_dtype=None):
  """Contracts x's trailing n_contract dims with w's leading ones: x free dims + w free dims.

  On CPU the contraction runs as one 2-D [M, K] x [K, N] matmul (reshapes of contiguous
  dims are free): for the N-D form, XLA:CPU writes the weight gradient's operand transposed
  from inside an elementwise fusion, with strided stores that made a GELU MLP's forward +
  backward 2x slower (experiments/bench_peers.py, BUILD_NOTES.md). Elsewhere the N-D
  dot_general keeps each free dim visible to sharding propagation.
  """
  if jax.default_backend() == "cpu":
    free_x, free_w = x.shape[:x.ndim - n_contract], w.shape[n_contract:]
    k = math.prod(w.shape[:n_contract])
    y = jax.lax.dot_general(x.reshape(math.prod(free_x), k), w.reshape(k, math.prod(free_w)),
                            (((1,), (0,)), ((), ())), preferred_element_type=out_dtype)
    return y.reshape(free_x + free_w)
  dims = (tuple(range(x.ndim - n_contract, x.ndim)), tuple(range(n_contract)))
  return jax.lax.dot_general(x, w, (dims, ((), ())), preferred_element_type=out_dtype)


class Projection(nn.Module):
  """x . kernel in compute dtype, plus a LoRA update when `peft` targets `role`.

  The kernel is [lead..., contract..., out...]: `n_batch` leading axes (stacked experts)
  are only used through `weight()`; `__call__` contracts the first `n_contract` kernel
  axes with the trailing axes of x. With LoRA, lora_a is [lead, contract, R] (normal
  1/sqrt(fan_in)) and lora_b [lead, R, out] (zeros), so a fresh LoRA model equals the
  base. `__call__` adds (alpha/R) (x A) B without forming kernel + AB, so no gradient
  of the base kernel's shape is ever computed.
  With `quant.scheme` set (and `quant.applies(role)`), the kernel is stored as kernel_q /
  kernel_scale / [kernel_zero] of its 2-D view [lead, contract, out] (model/quant.py)
  and dequantized on the fly; with `quant.qat` the float kernel is fake-quantized.
  """
  config: ModelConfig
  peft: PeftConfig
  kernel_shape: tuple
  kernel_axes: tuple
  n_contract: int = 1
  init_std: float = 0.02
  role: str = ""
  out_dtype: Any = None
  zero_init: bool = False
  n_batch: int = 0
  quant: QuantConfig = QuantConfig()
  use_bias: bool = False

  def setup(self):
    if len(self.kernel_shape) != len(self.kernel_axes):
      raise ValueError(f"{self.role}: kernel_shape {self.kernel_shape} and kernel_axes "
                       f"{self.kernel_axes} differ in rank")
    self.quantized = self.quant.applies(self.role)
    if self.quantized and self.quant.stored:
      self._setup_quantized()
    else:
      init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(self.init_std)
      self.kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                               self.kernel_shape, jnp.float32)
    if self.use_bias:
      if self.n_batch:
        raise ValueError(f"{self.role}: stacked (expert) kernels take no bias")
      split = self.n_contract
      self.bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[split:]),
          self.kernel_shape[split:], jnp.float32)
    self.has_lora = self.peft.lora_targets(self.role)
    if self.has_lora:
      split = self.n_batch + self.n_contract
      lead, r = self.kernel_shape[:self.n_batch], self.peft.rank
      fan_in = math.prod(self.kernel_shape[self.n_batch:split])
      self.lora_a = self.param(
          "lora_a", param_init(1.0 / math.sqrt(fan_in),
                               self.kernel_axes[:split] + ("lora_rank",)),
          self.kernel_shape[:split] + (r,), jnp.float32)
      self.lora_b = self.param(
          "lora_b", nn.with_logical_partitioning(
              nn.initializers.zeros,
              self.kernel_axes[:self.n_batch] + ("lora_rank",) + self.kernel_axes[split:]),
          lead + (r,) + self.kernel_shape[split:], jnp.float32)

  def _view_2d(self):
    """(lead shape, Din, Dout, logical axes of the 2-D view) of the kernel."""
    split = self.n_batch + self.n_contract
    shape, axes = self.kernel_shape, self.kernel_axes
    lead = tuple(shape[:self.n_batch])
    view_axes = tuple(axes[:self.n_batch]) + (axes[self.n_batch], axes[split])
    return lead, math.prod(shape[self.n_batch:split]), math.prod(shape[split:]), view_axes

  def _setup_quantized(self):
    """Stored integer leaves; init gives all-zero weights (quantize a float model instead)."""
    q = self.quant
    lead, din, dout, axes = self._view_2d()
    shapes = quantized_shapes(lead, din, dout, q.scheme, q.group(q.scheme), q.symmetric)
    inits = {"kernel_q": nn.initializers.zeros, "kernel_scale": nn.initializers.ones,
             "kernel_zero": nn.initializers.zeros}
    self.qleaves = {
        name: self.param(name, nn.with_logical_partitioning(inits[name], axes), shape, dtype)
        for name, (shape, dtype) in shapes.items()}

  def float_kernel(self):
    """The float32 kernel the matmul uses: stored, dequantized, or fake-quantized (QAT)."""
    if not self.quantized:
      return self.kernel
    lead, din, dout, _ = self._view_2d()
    if self.quant.stored:
      w = dequantize(self.qleaves, din)
    else:
      q = self.quant
      w = fake_quant(self.kernel.reshape(lead + (din, dout)), q.qat, q.group(q.qat),
                     q.symmetric)
    return w.reshape(self.kernel_shape)

  def __call__(self, x, deterministic: bool = True):
    if self.n_batch:
      raise ValueError(f"{self.role}: a kernel with stacked axes is used through weight()")
    dtype = compute_dtype(self.config)
    x = x.astype(dtype)
    y = _contract(x, self.float_kernel().astype(dtype), self.n_contract, self.out_dtype)
    if self.use_bias:
      y = y + self.bias.astype(y.dtype)
    if not self.has_lora:
      return y
    if not deterministic and self.peft.dropout > 0:
      keep = 1.0 - self.peft.dropout
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
      x = jnp.where(mask, x / keep, 0).astype(dtype)
    h = _contract(x, self.lora_a.astype(dtype), self.n_contract)
    delta = _contract(h, self.lora_b.astype(dtype), 1, self.out_dtype)
    return y + (self.peft.lora_scale * delta).astype(y.dtype)

  def weight(self):
    """The effective float32 kernel (kernel + (alpha/R) A.B): for stacked expert weights
    that enter shard_map whole. LoRA dropout does not apply on this path."""
    if not self.has_lora:
      return self.float_kernel()
    return self.float_kernel() + lora_delta(self.lora_a, self.lora_b, self.kernel_shape,
                                            self.peft.lora_scale)


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


class LearnedPositions(nn.Module):
  """A learned [max_len, d_model] table looked up by absolute position.

  contiguous=True promises positions_BL[b] == 0..L-1 for every row: the first L rows are
  sliced instead of gathered (a gather's backward is a scatter-add, slow on CPU).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, positions_BL, contiguous: bool = False):
    c = self.config
    table = self.param("embedding", param_init(c.init_std, ("position", "embed")),
                       (c.max_len, c.d_model), jnp.float32)
    table = sharding.constrain(table, ("position", None))  # See Embed.__call__.
    if contiguous:
      rows_LD = table[:positions_BL.shape[1]]
      return jnp.broadcast_to(rows_LD[None], positions_BL.shape + rows_LD.shape[1:]).astype(
          compute_dtype(c))
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


def rope_inv_freq(config: ModelConfig):
  """[head_dim // 2] float32 rotary frequencies, with config.rope_scaling applied.

  "linear" divides every frequency by rope_factor; "llama3" (Llama 3.1+) divides the
  low frequencies (wavelength > original_max_len / low_freq_factor) by rope_factor, keeps
  the high ones (wavelength < original_max_len / high_freq_factor) and interpolates
  smoothly in between.
  """
  h, c = config.head_dim, config
  inv_freq = c.rope_theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  if c.rope_scaling == "linear":
    return inv_freq / c.rope_factor
  if c.rope_scaling == "llama3":
    wavelen = 2 * math.pi / inv_freq
    ctx, low, high = c.rope_original_max_len, c.rope_low_freq_factor, c.rope_high_freq_factor
    smooth = (ctx / wavelen - low) / (high - low)
    mixed = (1 - smooth) * inv_freq / c.rope_factor + smooth * inv_freq
    inv_freq = jnp.where(wavelen > ctx / low, inv_freq / c.rope_factor,
                         jnp.where(wavelen < ctx / high, inv_freq, mixed))
  return inv_freq


def apply_rope(x_BLNH, positions_BL, theta: float, inv_freq=None):
  """Rotary position embedding (rotate-half form) applied in float32.

  `inv_freq` (from `rope_inv_freq`) overrides the plain theta ** (-2i / head_dim).
  """
  h = x_BLNH.shape[-1]
  if h % 2:
    raise ValueError(f"rotary embeddings need an even head dim, got {h}")
  if inv_freq is None:
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

  Projection names match MoeMlp's experts (model/moe.py); `width` overrides config.ffw_dim.
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  width: int = 0
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    c = self.config
    f = self.width or c.ffw_dim
    act = _activation(c.activation)

    def proj(name, shape, names, std):
      return Projection(c, self.peft, shape, names, 1, std, f"mlp.{name}", quant=self.quant,
                        use_bias=c.mlp_bias, name=name)

    gated = c.activation == "swiglu"
    w_in = "wi_gate" if gated else "wi"
    h_BLF = act(proj(w_in, (c.d_model, f), ("embed", "mlp"), c.init_std)(x_BLD, deterministic))
    if gated:
      up = proj("wi_up", (c.d_model, f), ("embed", "mlp"), c.init_std)
      h_BLF = h_BLF * up(x_BLD, deterministic)
    h_BLF = sharding.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    wo = proj("wo", (f, c.d_model), ("mlp", "embed"), out_proj_std(c))
    return wo(h_BLF, deterministic)
