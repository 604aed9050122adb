"""Encoder-decoder: cached decoding equals the full forward, causality, padding, sharding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.attention import init_cache
from model.config import ModelConfig, preset
from model.encoder_decoder import EncoderDecoder, make_model

DENSE = ModelConfig(arch="encoder_decoder", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=2, max_len=32)
MOE_LOOPED = dataclasses.replace(DENSE, n_experts=4, experts_per_token=2, d_ff_expert=32,
                                 scan_layers=False, pos_encoding="learned", norm="layer",
                                 norm_position="post", tie_embeddings=True)
SOURCE_LENGTHS = [7, 3, 5]
TARGET_LEN = 6


def _inputs(config, seed=0):
  rng = np.random.default_rng(seed)
  b, s = len(SOURCE_LENGTHS), max(SOURCE_LENGTHS) + 2
  source_BS = rng.integers(1, config.vocab_size, (b, s)).astype(np.int32)
  valid_BS = np.arange(s)[None] < np.asarray(SOURCE_LENGTHS)[:, None]
  source_BS = np.where(valid_BS, source_BS, 0)
  tokens_BL = rng.integers(1, config.vocab_size, (b, TARGET_LEN)).astype(np.int32)
  return jnp.asarray(source_BS), jnp.asarray(valid_BS), jnp.asarray(tokens_BL)


@pytest.fixture(scope="module", params=["dense", "moe_looped"])
def setup(request):
  config = DENSE if request.param == "dense" else MOE_LOOPED
  model = EncoderDecoder(config)
  source_BS, valid_BS, tokens_BL = _inputs(config)
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), tokens_BL, source_BS=source_BS,
                                                source_valid_BS=valid_BS)["params"]))()
  full = jax.jit(lambda p, s, v, t: model.apply({"params": p}, t, source_BS=s,
                                                 source_valid_BS=v)[0])
  return config, model, params, full, (source_BS, valid_BS, tokens_BL)


def test_cached_decoding_equals_full_forward_every_step(setup):
  config, model, params, full, (source_BS, valid_BS, tokens_BL) = setup
  want_BLV = np.asarray(full(params, source_BS, valid_BS, tokens_BL))
  cache = init_cache(config, tokens_BL.shape[0], 16)
  prefill = jax.jit(lambda p, c, t, s, v: model.apply({"params": p}, t, cache=c, source_BS=s,
                                                      source_valid_BS=v))
  step = jax.jit(lambda p, c, t: model.apply({"params": p}, t, cache=c))
  logits_B1V, _, cache = prefill(params, cache, tokens_BL[:, :1], source_BS, valid_BS)
  assert set(cache) == {"k", "v", "lengths", "cross_k", "cross_v", "source_valid"}
  assert cache["cross_k"].shape == (config.n_layers, 3, source_BS.shape[1], config.heads_kv,
                                    config.head_dim)
  np.testing.assert_allclose(logits_B1V[:, 0], want_BLV[:, 0], atol=2e-5, rtol=1e-4)
  for t in range(1, TARGET_LEN):
    logits_B1V, _, cache = step(params, cache, tokens_BL[:, t:t + 1])
    np.testing.assert_allclose(logits_B1V[:, 0], want_BLV[:, t], atol=2e-5, rtol=1e-4,
                               err_msg=f"step {t}")
  np.testing.assert_array_equal(cache["lengths"], [TARGET_LEN] * 3)


def test_padded_batch_equals_each_row_alone(setup):
  """Source padding is masked in the encoder and in cross-attention; target rows of
  different lengths equal their own unpadded forward."""
  config, model, params, full, (source_BS, valid_BS, tokens_BL) = setup
  want_BLV = np.asarray(full(params, source_BS, valid_BS, tokens_BL))
  apply = jax.jit(lambda p, t, s: model.apply({"params": p}, t, source_BS=s)[0])
  for b, (s_len, t_len) in enumerate(zip(SOURCE_LENGTHS, [6, 2, 4])):
    alone = apply(params, tokens_BL[b:b + 1, :t_len], source_BS[b:b + 1, :s_len])
    np.testing.assert_allclose(alone[0], want_BLV[b, :t_len], atol=2e-5, rtol=1e-4)


def test_decoder_causal_encoder_bidirectional(setup):
  config, model, params, full, (source_BS, valid_BS, tokens_BL) = setup
  base = np.asarray(full(params, source_BS, valid_BS, tokens_BL))
  t = 2  # changing decoder input t changes no logit before t, and logit t itself
  changed = np.asarray(full(params, source_BS, valid_BS,
                            tokens_BL.at[:, t].set((tokens_BL[:, t] + 1) % config.vocab_size)))
  np.testing.assert_allclose(changed[:, :t], base[:, :t], atol=1e-6)
  assert np.abs(changed[:, t] - base[:, t]).max() > 1e-4
  # The last valid source token reaches the first target position (bidirectional source).
  last = np.asarray(SOURCE_LENGTHS) - 1
  rows = np.arange(3)
  src = source_BS.at[rows, last].set((source_BS[rows, last] + 1) % config.vocab_size)
  changed = np.asarray(full(params, src, valid_BS, tokens_BL))
  assert np.all(np.abs(changed[:, 0] - base[:, 0]).max(-1) > 1e-4)
  # Padding tokens of the source change nothing.
  src = jnp.where(valid_BS, source_BS, 5)
  np.testing.assert_allclose(np.asarray(full(params, src, valid_BS, tokens_BL)), base,
                             atol=1e-6)


def test_sharded_equals_single_device(setup):
  config, model, params, full, (source_BS, valid_BS, tokens_BL) = setup
  want = np.asarray(full(params, source_BS, valid_BS, tokens_BL))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  if config.is_moe:
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2, "expert": 2})
  with sharding.use_mesh(mesh):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BL, source_BS=source_BS))
    shardings = sharding.tree_shardings(boxed["params"], mesh)
    sharded = jax.tree.map(jax.device_put, params, shardings)
    batch = sharding.batch_sharding(mesh, 2)
    pad = lambda x: jnp.concatenate([x, x[:1]])  # 4 rows: divisible by the batch axes
    args = [jax.device_put(pad(x), batch) for x in (source_BS, valid_BS, tokens_BL)]
    got = np.asarray(jax.jit(lambda p, s, v, t: model.apply(
        {"params": p}, t, source_BS=s, source_valid_BS=v)[0])(sharded, *args))
  assert any(len(s.spec) and any(a is not None for a in s.spec)
             for s in jax.tree.leaves(shardings)), "nothing was sharded"
  np.testing.assert_allclose(got[:3], want, atol=2e-5, rtol=1e-4)


def test_errors_and_factory():
  assert isinstance(make_model(DENSE), EncoderDecoder)
  model = EncoderDecoder(DENSE)
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="source_BS"):
    model.init(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match="arch='encoder_decoder'"):
    EncoderDecoder(preset("tiny")).init(jax.random.key(0), tokens, source_BS=tokens)
