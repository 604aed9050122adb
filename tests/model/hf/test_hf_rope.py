"""Rotary frequency scaling equals transformers' own computation of the frequencies."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from model.config import ModelConfig  # noqa: E402
from model.hf import configs  # noqa: E402
from model.layers import rope_inv_freq  # noqa: E402


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_inv_freq_matches_transformers(rope):
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=g-import-not-at-top
  hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, num_hidden_layers=1,
                                intermediate_size=64, vocab_size=32, rope_parameters=rope,
                                max_position_embeddings=2048)
  config, _ = configs.from_hf(hf.to_dict())
  ours = np.asarray(rope_inv_freq(config))
  if rope["rope_type"] == "default":
    want = 1.0 / rope["rope_theta"] ** (np.arange(0, 128, 2) / 128)
  else:
    want = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, torch.device("cpu"))[0].numpy()
  np.testing.assert_allclose(ours, want, rtol=2e-6)
  assert config.head_dim == 128
  back = configs.to_hf(config, "llama")["rope_parameters"]
  assert {k: back[k] for k in rope} == rope


def test_default_config_is_unchanged():
  c = ModelConfig()
  assert (c.rope_scaling, c.qkv_bias, c.out_bias, c.mlp_bias) == ("none", False, False, False)
  with pytest.raises(ValueError, match="rope_scaling"):
    dataclasses.replace(c, rope_scaling="yarn")
