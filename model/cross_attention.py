"""Cross-attention: decoder queries attend to the encoder's output (encoder-decoder models).

Keys and values are projections of the encoder output; they do not depend on the decoder
tokens, so decoding computes them once per source (`project_kv`) and keeps them in the
cache beside the self-attention K/V (model/encoder_decoder.py). Query i of row b sees
source position j iff `source_valid_BS[b, j]` (padding is masked). No rotary embedding:
source and target positions live in different sequences.

Projection roles are "attn.cross_query", "attn.cross_key", ... so LoRA's attention targets
and quantization reach them like the self-attention projections.
"""

import flax.linen as nn
import jax.numpy as jnp

from model import sharding
from model.attention import masked_attention
from model.config import ModelConfig, compute_dtype
from model.layers import Projection, out_proj_std
from model.peft import PeftConfig
from model.quant import QuantConfig

_KV_AXES = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")
_Q_AXES = ("act_batch", "act_length", "act_heads", "act_head_dim")


class CrossAttention(nn.Module):
  """`(x_BLD, source_valid_BS, encoded_BSD=None, kv=None) -> (out_BLD, (k_BSKH, v_BSKH))`.

  Give the encoder output `encoded_BSD` (keys/values are projected here) or the cached
  `kv = (k_BSKH, v_BSKH)` from an earlier call; the K/V used are returned either way.
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  quant: QuantConfig = QuantConfig()

  def _proj(self, name, shape, names, n_contract, std):
    return Projection(self.config, self.peft, shape, names, n_contract, std,
                      f"attn.cross_{name}", quant=self.quant, name=name)

  @nn.compact
  def __call__(self, x_BLD, source_valid_BS, encoded_BSD=None, kv=None,
               deterministic: bool = True):
    c = self.config
    n, k, h, d = c.n_heads, c.heads_kv, c.head_dim, c.d_model
    if (encoded_BSD is None) == (kv is None):
      raise ValueError("cross-attention needs exactly one of the encoder output and cached "
                       "cross-attention keys/values")
    if kv is None:
      k_BSKH = self._proj("key", (d, k, h), ("embed", "kv_heads", "head_dim"), 1,
                          c.init_std)(encoded_BSD, deterministic)
      v_BSKH = self._proj("value", (d, k, h), ("embed", "kv_heads", "head_dim"), 1,
                          c.init_std)(encoded_BSD, deterministic)
      k_BSKH = sharding.constrain(k_BSKH, _KV_AXES)
      v_BSKH = sharding.constrain(v_BSKH, _KV_AXES)
    else:
      k_BSKH, v_BSKH = kv
    q_BLNH = self._proj("query", (d, n, h), ("embed", "heads", "head_dim"), 1, c.init_std)(
        x_BLD, deterministic)
    q_BLNH = sharding.constrain(q_BLNH, _Q_AXES)
    dtype = compute_dtype(c)
    # A row with no valid source position (an all-padding filler row) sees every position,
    # so its softmax stays finite; its loss weight is zero anyway.
    source_valid_BS = source_valid_BS | ~jnp.any(source_valid_BS, axis=1, keepdims=True)
    mask_B1LS = jnp.broadcast_to(source_valid_BS[:, None, None, :],
                                 (x_BLD.shape[0], 1, x_BLD.shape[1], source_valid_BS.shape[1]))
    out_BLNH = masked_attention(q_BLNH, k_BSKH.astype(dtype), v_BSKH.astype(dtype), mask_B1LS)
    out_BLNH = sharding.constrain(out_BLNH, _Q_AXES)
    out = self._proj("out", (n, h, d), ("heads", "head_dim", "embed"), 2, out_proj_std(c))
    return out(out_BLNH, deterministic), (k_BSKH, v_BSKH)
