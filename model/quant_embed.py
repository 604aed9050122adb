"""The token embedding stored as int8 / int4 (quant.include_embed), or fake-quantized (QAT).

The table [V, D] is quantized as its transpose [D, V]: the layout of an untied head, so
Din = D and Dout = V in model/quant.py's terms. int8 gives each token row one scale;
int4 gives it D / G scales (groups of G embedding dims) and packs two dims per byte. A
lookup gathers the stored columns of the looked-up tokens and dequantizes only those; the
tied output projection (`attend`) is x . dequantize([D, V]), exactly an int head. Params
(stored): embed/{kernel_q, kernel_scale[, kernel_zero]}; with QAT the float
embed/embedding of the plain model, so a QAT run exports to bit-identical logits.
"""

import flax.linen as nn
import jax.numpy as jnp

from model.config import ModelConfig, compute_dtype
from model.layers import param_init
from model.quant import QuantConfig, dequantize, fake_quant, quantized_shapes

_VIEW_AXES = ("embed", "vocab")


class QuantEmbed(nn.Module):
  """Drop-in for model.layers.Embed when `quant.applies("embed")`."""
  config: ModelConfig
  quant: QuantConfig

  def setup(self):
    c, q = self.config, self.quant
    if q.stored:
      shapes = quantized_shapes((), c.d_model, c.vocab_size, q.scheme, q.group(q.scheme),
                                q.symmetric)
      inits = {"kernel_q": nn.initializers.zeros, "kernel_scale": nn.initializers.ones,
               "kernel_zero": nn.initializers.zeros}
      self.qleaves = {
          name: self.param(name, nn.with_logical_partitioning(inits[name], _VIEW_AXES), shape,
                           dtype)
          for name, (shape, dtype) in shapes.items()}
    else:
      self.table = self.param("embedding", param_init(c.init_std, ("vocab", "embed")),
                              (c.vocab_size, c.d_model), jnp.float32)

  def _view_DV(self):
    """The float32 [D, V] table the model uses (dequantized, or fake-quantized)."""
    q = self.quant
    if q.stored:
      return dequantize(self.qleaves, self.config.d_model)
    return fake_quant(self.table.T, q.qat, q.group(q.qat), q.symmetric)

  @property
  def embedding(self):
    """The effective [V, D] table (as Embed.embedding)."""
    return self._view_DV().T

  def __call__(self, tokens_BL):
    c = self.config
    if self.quant.stored:
      flat_N = tokens_BL.reshape(-1)
      columns = {name: jnp.take(leaf, flat_N, axis=-1) for name, leaf in self.qleaves.items()}
      x_ND = dequantize(columns, c.d_model).T
      x_BLD = x_ND.reshape(tokens_BL.shape + (c.d_model,))
    else:
      x_BLD = jnp.take(self.embedding, tokens_BL, axis=0)
    return x_BLD.astype(compute_dtype(c))

  def attend(self, x_BLD):
    w_DV = self._view_DV().astype(compute_dtype(self.config))
    return jnp.einsum("bld,dv->blv", x_BLD, w_DV, preferred_element_type=jnp.float32)
