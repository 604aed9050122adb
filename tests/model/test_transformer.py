"""Transformer: every option runs, causality, scan == loop, remat, KV-cache decode, sharding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.attention import cache_logical_axes, init_cache
from model.config import ModelConfig
from model.layers import Embed
from model.transformer import (Transformer, count_params, stack_layer_params,
                               unstack_layer_params)

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   max_len=32)


def _tokens(b, l, seed=0, vocab=64):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, l), 0, vocab, jnp.int32)


def _init(config, tokens, seed=0):
  return Transformer(config).init(jax.random.PRNGKey(seed), tokens)


def _loss(config):
  def loss(params, tokens):
    logits, _ = Transformer(config).apply(params, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))
  return loss


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(pos_encoding="learned", norm="layer", activation="gelu", tie_embeddings=True),
    dict(pos_encoding="sinusoidal", norm_position="post", activation="relu"),
    dict(norm="layer", norm_position="post", tie_embeddings=True, n_kv_heads=1),
    dict(pos_encoding="learned", activation="relu", scan_layers=False, d_head=16),
    dict(dtype="bfloat16", activation="gelu", n_kv_heads=0),
])
def test_every_option_runs(overrides):
  c = dataclasses.replace(BASE, **overrides)
  tokens = _tokens(2, 8)
  variables = _init(c, tokens)
  logits, aux = Transformer(c).apply(variables, tokens)
  assert logits.shape == (2, 8, c.vocab_size) and logits.dtype == jnp.float32
  assert aux == {}
  assert np.isfinite(np.asarray(logits)).all()
  for leaf in jax.tree.leaves(nn.meta.unbox(variables)):
    assert leaf.dtype == jnp.float32
  names = set(variables["params"])
  assert ("unembed" in names) != c.tie_embeddings
  assert ("pos_embed" in names) == (c.pos_encoding == "learned")
  assert ("final_norm" in names) == (c.norm_position == "pre")


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_causality_gradient_is_exactly_zero_after_t(pos):
  c = dataclasses.replace(BASE, pos_encoding=pos)
  tokens = _tokens(1, 8)
  variables = _init(c, tokens)
  t = 3

  def out_at_t(delta_BLD):
    def add_delta(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if isinstance(context.module, Embed) and context.method_name == "__call__":
        y = y + delta_BLD
      return y
    with nn.intercept_methods(add_delta):
      logits, _ = Transformer(c).apply(variables, tokens)
    return jnp.sum(logits[0, t] ** 2)

  g = np.asarray(jax.grad(out_at_t)(jnp.zeros((1, 8, c.d_model))))
  assert np.all(g[0, t + 1:] == 0.0)
  assert np.all(np.abs(g[0, :t + 1]).sum(-1) > 0)


def test_scan_and_loop_give_same_logits():
  c_scan = dataclasses.replace(BASE, n_layers=3)
  c_loop = dataclasses.replace(c_scan, scan_layers=False)
  tokens = _tokens(2, 8)
  p_scan = _init(c_scan, tokens)
  p_loop = unstack_layer_params(p_scan["params"], c_scan)
  assert count_params(p_loop) == count_params(p_scan)
  want, _ = Transformer(c_scan).apply(p_scan, tokens)
  got, _ = Transformer(c_loop).apply({"params": p_loop}, tokens)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
  # And back: a loop-layout init stacks into the scan layout.
  p_loop2 = nn.meta.unbox(_init(c_loop, tokens, seed=1)["params"])
  want2, _ = Transformer(c_loop).apply({"params": p_loop2}, tokens)
  got2, _ = Transformer(c_scan).apply({"params": stack_layer_params(p_loop2, c_loop)}, tokens)
  np.testing.assert_allclose(got2, want2, atol=1e-6, rtol=1e-6)
  assert jax.tree.structure(stack_layer_params(p_loop, c_scan)) == jax.tree.structure(
      nn.meta.unbox(p_scan["params"]))


def test_remat_policies_give_same_loss_and_grads():
  tokens = _tokens(2, 8)
  params = nn.meta.unbox(_init(BASE, tokens))
  results = {}
  for remat in ("none", "full", "dots", "dots_no_batch"):
    c = dataclasses.replace(BASE, remat=remat)
    results[remat] = jax.jit(jax.value_and_grad(_loss(c)))(params, tokens)
  loss0, grads0 = results["none"]
  for remat, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, loss0, rtol=1e-6, err_msg=remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 grads, grads0)


def _decode_matches_full(c, prompt_lens, total, capacity):
  """Right-padded prefill, lengths overwritten, then one token per step vs full forward."""
  model = Transformer(c)
  b = len(prompt_lens)
  tokens = _tokens(b, total, seed=3)
  variables = _init(c, tokens)
  full, _ = jax.jit(model.apply)(variables, tokens)
  p_max = max(prompt_lens)
  garbage = _tokens(b, p_max, seed=4)
  col = jnp.arange(p_max)[None]
  prompt = jnp.where(col < jnp.array(prompt_lens)[:, None], tokens[:, :p_max], garbage)

  step = jax.jit(lambda v, t, cache: model.apply(v, t, cache=cache))
  logits, _, cache = step(variables, prompt, init_cache(c, b, capacity))
  assert cache["lengths"].tolist() == [p_max] * b
  for row, n in enumerate(prompt_lens):
    np.testing.assert_allclose(logits[row, :n], full[row, :n], atol=1e-5, rtol=1e-5)
  cache["lengths"] = jnp.array(prompt_lens, jnp.int32)
  rows = jnp.arange(b)
  for _ in range(total - p_max):
    lengths = cache["lengths"]
    logits, _, cache = step(variables, tokens[rows, lengths][:, None], cache)
    np.testing.assert_allclose(logits[:, 0], full[rows, lengths], atol=1e-5, rtol=1e-5)
    assert (cache["lengths"] == lengths + 1).all()


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_kv_cache_decode_matches_full_forward(pos):
  c = dataclasses.replace(BASE, pos_encoding=pos)
  _decode_matches_full(c, prompt_lens=[2, 5, 3], total=9, capacity=12)


def test_kv_cache_decode_loop_layout_post_norm_mqa():
  c = dataclasses.replace(BASE, scan_layers=False, norm_position="post", n_kv_heads=1,
                          tie_embeddings=True)
  _decode_matches_full(c, prompt_lens=[4, 4], total=7, capacity=7)


def test_bad_inputs_raise_clear_errors():
  c = dataclasses.replace(BASE, pos_encoding="learned", max_len=8)
  tokens = _tokens(1, 8)
  variables = _init(c, tokens)
  with pytest.raises(ValueError, match="max_len"):
    Transformer(c).apply(variables, _tokens(1, 9))
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    Transformer(c).apply(variables, tokens[0])
  with pytest.raises(ValueError, match="init_cache"):
    Transformer(c).apply(variables, tokens, cache=init_cache(BASE, 1, 8))


@pytest.mark.parametrize("mesh_shape", [dict(data=2, fsdp=2, tensor=2),
                                        dict(fsdp=4, tensor=2)])
def test_sharded_matches_single_device(mesh_shape):
  assert len(jax.devices()) >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
  c = dataclasses.replace(BASE, vocab_size=128, n_kv_heads=1 if "data" in mesh_shape else 2)
  model = Transformer(c)
  tokens = _tokens(4, 8)
  loss_and_grad = jax.value_and_grad(_loss(c))

  dev0 = jax.devices()[0]
  ref_vars = jax.device_put(
      nn.meta.unbox(jax.jit(model.init, device=dev0)(jax.random.PRNGKey(0), tokens)), dev0)
  ref_loss, ref_grads = jax.jit(loss_and_grad)(ref_vars, jax.device_put(tokens, dev0))
  cache = jax.device_put(init_cache(c, 4, 10), dev0)
  ref_logits, _, ref_cache = jax.jit(lambda v, t, k: model.apply(v, t, cache=k))(
      ref_vars, tokens[:, :5], cache)

  mesh = sharding.make_mesh(mesh_shape)
  with sharding.use_mesh(mesh):
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
    shardings = sharding.tree_shardings(abstract, mesh)
    init = jax.jit(lambda k, t: nn.meta.unbox(model.init(k, t)), out_shardings=shardings)
    params = init(jax.random.PRNGKey(0), tokens)
    emb = params["params"]["embed"]["embedding"]
    assert emb.sharding.spec == sharding.logical_spec(("vocab", "embed"), emb.shape, mesh)
    assert not emb.sharding.is_fully_replicated
    batch = jax.device_put(tokens, sharding.batch_sharding(mesh))
    loss, grads = jax.jit(loss_and_grad, out_shardings=(None, shardings))(params, batch)

    cache_axes = cache_logical_axes(c)
    cache_shardings = {k: jax.sharding.NamedSharding(
        mesh, sharding.logical_spec(cache_axes[k], v.shape, mesh)) for k, v in cache.items()}
    s_cache = jax.device_put(init_cache(c, 4, 10), cache_shardings)
    s_logits, _, s_cache = jax.jit(lambda v, t, k: model.apply(v, t, cache=k),
                                   out_shardings=(None, None, cache_shardings))(
        params, jax.device_put(tokens[:, :5], sharding.batch_sharding(mesh)), s_cache)

  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, ref_vars)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               grads, ref_grads)
  np.testing.assert_allclose(s_logits, ref_logits, atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               s_cache, ref_cache)
