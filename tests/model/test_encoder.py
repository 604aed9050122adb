"""Encoder-only model: bidirectional vs causal dependence, padding, refusals, pooling head."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model.attention import Mask, init_cache
from model.config import ModelConfig, preset, strict_from_dict
from model.pooling_head import Classifier, pool
from model.transformer import Transformer

ENC = ModelConfig(arch="encoder", vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_len=32)
DEC = dataclasses.replace(ENC, arch="decoder")
L, T = 12, 4  # sequence length; the query position whose dependence is tested


def _init(config, tokens):
  return nn.unbox(Transformer(config).init(jax.random.key(0), tokens)["params"])


def _later_token_grad(config):
  """|d out[T] / d embedding rows used only at positions > T|: tokens 0..T are ids < 32,
  later ones ids >= 32, so those table rows reach the output only through later inputs."""
  tokens = jnp.asarray(np.r_[np.arange(T + 1) + 1, 32 + np.arange(L - T - 1)][None], jnp.int32)
  params = _init(config, tokens)

  def out_t(embedding):
    p = dict(params, embed=dict(params["embed"], embedding=embedding))
    logits, _ = Transformer(config).apply({"params": p}, tokens)
    return jnp.sum(logits[0, T] * jnp.arange(config.vocab_size))

  grad = jax.grad(out_t)(params["embed"]["embedding"])
  return float(jnp.abs(grad[32:]).max()), float(jnp.abs(grad[:32]).max())


def test_encoder_sees_later_tokens_decoder_does_not():
  later, earlier = _later_token_grad(ENC)
  assert later > 1e-6 and earlier > 1e-6
  later, earlier = _later_token_grad(DEC)
  assert later == 0.0 and earlier > 1e-6


@pytest.mark.parametrize("config", [ENC, DEC], ids=["encoder", "decoder"])
def test_padding_is_masked(config):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, (2, L)).astype(np.int32)
  seg = np.ones((2, L), np.int32)
  seg[0, 7:] = 0  # row 0: 7 tokens then padding
  seg[1, 10:] = 0
  other = tokens.copy()
  other[0, 7:] = rng.integers(1, 64, L - 7)
  other[1, 10:] = 0
  params = _init(config, tokens)
  mask = (Mask.bidirectional(seg) if config.arch == "encoder" else Mask.packed(seg))
  apply = jax.jit(lambda t: Transformer(config).apply({"params": params}, t, mask=mask)[0])
  a, b = apply(tokens), apply(other)
  np.testing.assert_allclose(a[0, :7], b[0, :7], atol=1e-6)
  np.testing.assert_allclose(a[1, :10], b[1, :10], atol=1e-6)
  assert not np.allclose(a[0, 7:], b[0, 7:])  # the padding positions did change
  # A row alone (no padding) gives the same states as the padded row.
  alone = jax.jit(lambda t: Transformer(config).apply({"params": params}, t)[0])(tokens[:1, :7])
  np.testing.assert_allclose(alone[0], a[0, :7], atol=1e-5)


def test_encoder_refuses_cache_and_causal_mask():
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = _init(ENC, tokens)
  with pytest.raises(ValueError, match="no KV cache"):
    Transformer(ENC).apply({"params": params}, tokens, cache=init_cache(ENC, 1, 8))
  with pytest.raises(ValueError, match="bidirectional mask"):
    Transformer(ENC).apply({"params": params}, tokens, mask=Mask.causal())


def test_arch_validated_and_old_configs_default_to_decoder():
  with pytest.raises(ValueError, match="model.arch='gpt'"):
    ModelConfig(arch="gpt")
  old = dataclasses.asdict(ModelConfig())
  del old["arch"]
  assert strict_from_dict(ModelConfig, old, "config").arch == "decoder"
  for name in ("encoder_tiny", "encoder_small", "bert_base", "moe_encoder_tiny"):
    assert preset(name).arch == "encoder"


def test_moe_encoder_runs_bidirectionally():
  c = preset("moe_encoder_tiny", vocab_size=64, d_model=32, max_len=32, d_ff_expert=32)
  tokens = jnp.asarray(np.arange(1, 9)[None], jnp.int32)
  params = _init(c, tokens)
  logits, aux = Transformer(c).apply({"params": params}, tokens)
  assert logits.shape == (1, 8, 64) and "load_balance_loss" in aux
  changed, _ = Transformer(c).apply({"params": params}, tokens.at[0, 7].set(40))
  assert not np.allclose(logits[0, 0], changed[0, 0])  # position 0 sees position 7


def test_pool_matches_numpy():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(3, 5, 4)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  want = np.stack([h[i][valid[i]].mean(0) for i in range(3)])
  np.testing.assert_allclose(pool(jnp.asarray(h), jnp.asarray(valid), "mean"), want, rtol=1e-6)
  np.testing.assert_allclose(pool(jnp.asarray(h), jnp.asarray(valid), "first"), h[:, 0])
  with pytest.raises(ValueError, match="pooling"):
    pool(jnp.asarray(h), jnp.asarray(valid), "max")


def test_classifier_head_trains_on_tiny_data(pooling="mean"):
  """Label = whether token 7 occurs anywhere in the row; padding is ignored."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(8, 64, (32, 10)).astype(np.int32)
  labels = np.arange(32) % 2
  where = rng.integers(1, 8, 32)
  tokens[labels == 1, where[labels == 1]] = 7
  tokens[:, 0] = 1  # a bos / [CLS] token
  seg = np.ones_like(tokens)
  seg[::3, 8:] = 0
  model = Classifier(ENC, n_labels=2, pooling=pooling)
  params = nn.unbox(model.init(jax.random.key(0), tokens[:1])["params"])
  out0, _ = model.apply({"params": params}, tokens, seg)
  np.testing.assert_allclose(out0, 0.0)  # zero-initialised head: uniform start
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss_fn(p):
    out, _ = model.apply({"params": p}, tokens, seg)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], 1))

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  for _ in range(150):
    params, state, loss = step(params, state)
  out, _ = model.apply({"params": params}, tokens, seg)
  assert float(loss) < 0.2
  assert np.mean(np.argmax(out, -1) == labels) >= 0.95


def test_encoder_scan_loop_and_remat_agree():
  from model.transformer import unstack_layer_params  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray(np.arange(1, 11)[None], jnp.int32)
  params = _init(ENC, tokens)
  want, _ = Transformer(ENC).apply({"params": params}, tokens)
  loop = dataclasses.replace(ENC, scan_layers=False, remat="full")
  got, _ = Transformer(loop).apply({"params": unstack_layer_params(params, ENC)}, tokens)
  np.testing.assert_allclose(got, want, atol=1e-5)
