"""Bottleneck adapters (Houlsby et al. 2019): h + up(gelu(down(h))) after a sub-layer.

The up projection starts at zero, so a freshly added adapter is the identity and the
adapted model computes exactly the base model. Block (model/transformer.py) applies one
to the attention output ("adapter_attn") and / or the FFN output ("adapter_mlp") before
the residual add, as PeftConfig.adapter_where says.
"""

import flax.linen as nn

from model.config import ModelConfig
from model.layers import Projection
from model.peft import PeftConfig


class Adapter(nn.Module):
  """Residual bottleneck D -> peft.adapter_dim -> D."""
  config: ModelConfig
  peft: PeftConfig

  @nn.compact
  def __call__(self, h_BLD, deterministic: bool = True):
    c, a = self.config, self.peft.adapter_dim
    down = Projection(c, self.peft, (c.d_model, a), ("embed", "adapter"), 1, c.init_std,
                      "adapter.down", name="down")
    up = Projection(c, self.peft, (a, c.d_model), ("adapter", "embed"), 1, 0.0,
                    "adapter.up", zero_init=True, name="up")
    return h_BLD + up(nn.gelu(down(h_BLD, deterministic)), deterministic).astype(h_BLD.dtype)
