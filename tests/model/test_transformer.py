"""Transformer: every option runs, causality, scan == loop, remat, KV-cache decode, packed
rows, prompt-tuning inputs, sharding."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.attention import Mask, cache_logical_axes, init_cache
from model.config import ModelConfig
from model.layers import Embed
from model.peft import PeftConfig
from model.transformer import (Transformer, count_params, stack_layer_params,
                               unstack_layer_params)

# Tiny programs: LLVM -O0 compiles ~4x faster on CPU and changes no results that matter here.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   max_len=32)


def _tokens(b, l, seed=0, vocab=64):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, l), 0, vocab, jnp.int32)


def _init(config, tokens, seed=0):
  """Random params from numpy in the real init's tree (no RNG compile: keeps tests fast)."""
  abstract = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), tokens)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    base = 1.0 if "scale" in name else 0.0
    std = 0.1 if base or "bias" in name else 0.3
    return jnp.asarray(base + std * rng.normal(size=leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract))


def _loss(config):
  def loss(params, tokens):
    logits, _ = Transformer(config).apply(params, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))
  return loss


@pytest.mark.parametrize("overrides", [
    dict(pos_encoding="learned", norm="layer", activation="gelu", tie_embeddings=True),
    dict(pos_encoding="sinusoidal", norm_position="post", activation="relu"),
    dict(norm="layer", norm_position="post", tie_embeddings=True, n_kv_heads=1,
         scan_layers=False, d_head=16),
    dict(dtype="bfloat16", activation="gelu", n_kv_heads=0),
])
def test_every_option_runs(overrides):
  c = dataclasses.replace(BASE, **overrides)
  tokens = _tokens(2, 8)
  abstract = jax.eval_shape(Transformer(c).init, jax.random.PRNGKey(0), tokens)
  for leaf in jax.tree.leaves(nn.meta.unbox(abstract)):
    assert leaf.dtype == jnp.float32
  names = set(abstract["params"])
  assert ("unembed" in names) != c.tie_embeddings
  assert ("pos_embed" in names) == (c.pos_encoding == "learned")
  assert ("final_norm" in names) == (c.norm_position == "pre")
  logits, aux = _jit(Transformer(c).apply)(_init(c, tokens), tokens)
  assert logits.shape == (2, 8, c.vocab_size) and logits.dtype == jnp.float32
  assert aux == {}
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("overrides", [
    dict(pos_encoding="rope"),
    dict(pos_encoding="learned", norm_position="post", scan_layers=False),
])
def test_causality_gradient_is_exactly_zero_after_t(overrides):
  c = dataclasses.replace(BASE, **overrides)
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

  g = np.asarray(_jit(jax.grad(out_at_t))(jnp.zeros((1, 8, c.d_model))))
  assert np.all(g[0, t + 1:] == 0.0)
  assert np.all(np.abs(g[0, :t + 1]).sum(-1) > 0)


def test_scan_and_loop_give_same_logits():
  c_scan = dataclasses.replace(BASE, n_layers=3)
  c_loop = dataclasses.replace(c_scan, scan_layers=False)
  tokens = _tokens(2, 8)
  p_scan = _init(c_scan, tokens)["params"]
  p_loop = unstack_layer_params(p_scan, c_scan)
  assert count_params(p_loop) == count_params(p_scan)
  abstract_loop = jax.eval_shape(Transformer(c_loop).init, jax.random.PRNGKey(0), tokens)
  assert jax.tree.structure(nn.meta.unbox(abstract_loop["params"])) == jax.tree.structure(p_loop)
  assert jax.tree.structure(stack_layer_params(p_loop, c_loop)) == jax.tree.structure(p_scan)
  want, _ = _jit(Transformer(c_scan).apply)({"params": p_scan}, tokens)
  got, _ = _jit(Transformer(c_loop).apply)({"params": p_loop}, tokens)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_moe_groups_scan_loop_and_aux_mean():
  """moe_every=2: block_1 of each group is MoE; aux is the mean over MoE layers."""
  pytest.importorskip("model.moe")
  from model.moe import MoeMlp  # pylint: disable=g-import-not-at-top
  c_scan = dataclasses.replace(BASE, n_layers=4, n_experts=4, experts_per_token=2,
                               moe_every=2, d_ff_expert=16)
  # remat off in the loop: the per-layer aux values are captured out of each block's call.
  c_loop = dataclasses.replace(c_scan, scan_layers=False, remat="none")
  tokens = _tokens(2, 8)
  p_scan = _init(c_scan, tokens)["params"]
  assert set(p_scan["layers"]) == {"block_0", "block_1"}
  assert "mlp" in p_scan["layers"]["block_0"] and "moe" not in p_scan["layers"]["block_0"]
  assert "moe" in p_scan["layers"]["block_1"] and "mlp" not in p_scan["layers"]["block_1"]
  p_loop = unstack_layer_params(p_scan, c_scan)
  want, aux_scan = _jit(Transformer(c_scan).apply)({"params": p_scan}, tokens)

  def loop_with_moe_aux(params, tokens):
    per_layer = []

    def capture(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if isinstance(context.module, MoeMlp) and context.method_name == "__call__":
        per_layer.append(y[1])
      return y
    with nn.intercept_methods(capture):
      logits, aux = Transformer(c_loop).apply({"params": params}, tokens)
    return logits, aux, per_layer
  got, aux_loop, per_layer = _jit(loop_with_moe_aux)(p_loop, tokens)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert len(per_layer) == 2
  assert set(aux_scan) == {"load_balance_loss", "router_z_loss", "drop_fraction",
                           "expert_load_cv"}
  for name in aux_scan:
    mean = (float(per_layer[0][name]) + float(per_layer[1][name])) / 2
    np.testing.assert_allclose(aux_loop[name], mean, rtol=1e-5)
    np.testing.assert_allclose(aux_scan[name], mean, rtol=1e-5)
    assert aux_scan[name].dtype == jnp.float32


def test_remat_policies_give_same_loss_and_grads():
  tokens = _tokens(2, 8)
  params = nn.meta.unbox(_init(BASE, tokens))
  results = {}
  for remat in ("none", "full", "dots", "dots_no_batch"):
    c = dataclasses.replace(BASE, remat=remat)
    results[remat] = _jit(jax.value_and_grad(_loss(c)))(params, tokens)
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
  full, _ = _jit(model.apply)(variables, tokens)
  p_max = max(prompt_lens)
  garbage = _tokens(b, p_max, seed=4)
  col = jnp.arange(p_max)[None]
  prompt = jnp.where(col < jnp.array(prompt_lens)[:, None], tokens[:, :p_max], garbage)

  step = _jit(lambda v, t, cache: model.apply(v, t, cache=cache))
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


@pytest.mark.parametrize("overrides", [
    dict(pos_encoding="rope"),
    dict(pos_encoding="learned", norm_position="post", n_kv_heads=1, tie_embeddings=True),
    dict(pos_encoding="sinusoidal", scan_layers=False, norm="layer", activation="gelu"),
])
def test_kv_cache_decode_matches_full_forward(overrides):
  c = dataclasses.replace(BASE, **overrides)
  _decode_matches_full(c, prompt_lens=[2, 5, 3], total=9, capacity=12)


def test_bad_inputs_raise_clear_errors():
  c = dataclasses.replace(BASE, pos_encoding="learned", max_len=8)
  tokens = _tokens(1, 8)
  init = lambda t, **kw: jax.eval_shape(
      lambda: Transformer(c).init(jax.random.PRNGKey(0), t, **kw))
  with pytest.raises(ValueError, match="max_len"):
    init(_tokens(1, 9))
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    init(tokens[0])
  with pytest.raises(ValueError, match="init_cache"):
    init(tokens, cache=init_cache(c, 2, 8))
  with pytest.raises(ValueError, match="init_cache"):
    init(tokens, cache=init_cache(dataclasses.replace(c, n_layers=3), 1, 8))
  with pytest.raises(ValueError, match="capacity"):
    init(tokens, cache=init_cache(c, 1, 4))


# Row 0: examples of 5 and 7 tokens, then 4 padding tokens; row 1: 9, 3 and 4 tokens.
PACKED_SEGMENTS = np.array([[1] * 5 + [2] * 7 + [0] * 4, [1] * 9 + [2] * 3 + [3] * 4], np.int32)


def _with_embed_delta(delta_BLD):
  """An interceptor adding delta to the token embeddings (a float input to differentiate)."""
  def add_delta(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, Embed) and context.method_name == "__call__":
      y = y + delta_BLD
    return y
  return nn.intercept_methods(add_delta)


@pytest.mark.parametrize("overrides", [
    dict(pos_encoding="rope"),
    dict(pos_encoding="learned", norm_position="post", scan_layers=False, activation="gelu"),
])
def test_packed_rows_equal_examples_alone(overrides):
  """Each example of a packed row gets the logits it gets alone (positions restart)."""
  c = dataclasses.replace(BASE, **overrides)
  tokens = np.asarray(_tokens(2, 16, seed=5))
  variables = _init(c, jnp.asarray(tokens))
  packed, _ = _jit(lambda v, t, m: Transformer(c).apply(v, t, mask=m))(
      variables, tokens, Mask.packed(PACKED_SEGMENTS))
  examples = [(b, np.flatnonzero(PACKED_SEGMENTS[b] == s)) for b in range(2)
              for s in range(1, 4) if (PACKED_SEGMENTS[b] == s).any()]
  alone_tokens = np.zeros((len(examples), 16), np.int32)  # right padding: invisible (causal)
  for row, (b, idx) in enumerate(examples):
    alone_tokens[row, :len(idx)] = tokens[b, idx]
  alone, _ = _jit(Transformer(c).apply)(variables, alone_tokens)
  for row, (b, idx) in enumerate(examples):
    np.testing.assert_allclose(packed[b, idx], alone[row, :len(idx)], atol=1e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(packed)).all()


def test_packed_segments_do_not_see_each_other_gradient():
  """d(loss on example 2) / d(embeddings of example 1) is exactly zero, nonzero within 2."""
  tokens = _tokens(2, 16, seed=6)
  variables = _init(BASE, tokens)
  mask = Mask.packed(PACKED_SEGMENTS)

  def loss_on_example_2(delta_BLD):
    with _with_embed_delta(delta_BLD):
      logits, _ = Transformer(BASE).apply(variables, tokens, mask=mask)
    return jnp.sum(jnp.where(PACKED_SEGMENTS[..., None] == 2, logits, 0.0) ** 2)

  g = np.abs(np.asarray(_jit(jax.grad(loss_on_example_2))(jnp.zeros((2, 16, BASE.d_model)))))
  g = g.sum(-1)
  assert np.all(g[PACKED_SEGMENTS != 2] == 0.0)
  assert np.all(g[PACKED_SEGMENTS == 2] > 0)


def test_prompt_tuning_input_errors():
  c = BASE
  peft = PeftConfig(method="prompt_tuning", prompt_length=3)
  tokens = _tokens(2, 16)
  init = lambda **kw: jax.eval_shape(
      lambda: Transformer(c, peft).init(jax.random.PRNGKey(0), tokens, **kw))
  with pytest.raises(ValueError, match="data.pack=false"):
    init(mask=Mask.packed(PACKED_SEGMENTS))
  with pytest.raises(ValueError, match="prepend_prompt"):
    init(cache=init_cache(c, 2, 32))
  with pytest.raises(ValueError, match="capacity"):
    init(cache=init_cache(c, 2, 18), prepend_prompt=True)
  learned = dataclasses.replace(c, pos_encoding="learned", max_len=18)
  with pytest.raises(ValueError, match="soft prompt 3 exceeds model.max_len"):
    jax.eval_shape(lambda: Transformer(learned, peft).init(jax.random.PRNGKey(0), tokens))


def test_prefix_lm_cached_prefill_matches_full_forward():
  """A prefix-LM prefill through the cache, then causal decode steps, equal the full pass."""
  model = Transformer(BASE)
  tokens = _tokens(2, 10, seed=7)
  variables = _init(BASE, tokens)
  mask = Mask.prefix(jnp.array([4, 6], jnp.int32))
  full, _ = _jit(lambda v, t, m: model.apply(v, t, mask=m))(variables, tokens, mask)
  step = _jit(lambda v, t, k, m: model.apply(v, t, cache=k, mask=m))
  logits, _, cache = step(variables, tokens[:, :6], init_cache(BASE, 2, 12), mask)
  np.testing.assert_allclose(logits, full[:, :6], atol=1e-5, rtol=1e-5)
  for t in range(6, 10):
    logits, _, cache = step(variables, tokens[:, t:t + 1], cache, mask)
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
  causal, _ = _jit(model.apply)(variables, tokens)
  assert np.abs(np.asarray(causal[:, :5]) - np.asarray(full[:, :5])).max() > 1e-3


SHARDED = dataclasses.replace(BASE, vocab_size=128)
_single_device_results = {}


def _single_device(c, variables, tokens, cache):
  """Loss, grads, prefill logits and cache on one device (computed once per config)."""
  if c not in _single_device_results:
    dev0 = jax.devices()[0]
    variables, tokens, cache = jax.device_put((variables, tokens, cache), dev0)
    model = Transformer(c)
    loss, grads = _jit(jax.value_and_grad(_loss(c)))(variables, tokens)
    logits, _, new_cache = _jit(lambda v, t, k: model.apply(v, t, cache=k))(
        variables, tokens[:, :5], cache)
    _single_device_results[c] = (loss, grads, logits, new_cache)
  return _single_device_results[c]


@pytest.mark.parametrize("mesh_shape,config,check_cache", [
    (dict(data=2, fsdp=2, tensor=2), SHARDED, True),
    (dict(fsdp=4, tensor=2), SHARDED, False),
    pytest.param(dict(data=2, fsdp=2, tensor=2), dataclasses.replace(SHARDED, n_kv_heads=1),
                 True, marks=pytest.mark.slow),
])
def test_sharded_matches_single_device(mesh_shape, config, check_cache):
  """Forward + grad (and a cached prefill) on a mesh equal the single-device results."""
  assert len(jax.devices()) >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
  c = config
  model = Transformer(c)
  tokens = _tokens(4, 8)
  mesh = sharding.make_mesh(mesh_shape)
  cache_axes = cache_logical_axes(c)
  cache = init_cache(c, 4, 10)
  with sharding.use_mesh(mesh):
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
    shardings = sharding.tree_shardings(abstract, mesh)
    init = _jit(lambda k, t: nn.meta.unbox(model.init(k, t)), out_shardings=shardings)
    params = init(jax.random.PRNGKey(0), tokens)
    emb = params["params"]["embed"]["embedding"]
    assert emb.sharding.spec == sharding.logical_spec(("vocab", "embed"), emb.shape, mesh)
    assert not emb.sharding.is_fully_replicated
    batch = jax.device_put(tokens, sharding.batch_sharding(mesh))
    loss, grads = _jit(jax.value_and_grad(_loss(c)), out_shardings=(None, shardings))(
        params, batch)
    if check_cache:
      cache_shardings = {k: jax.sharding.NamedSharding(
          mesh, sharding.logical_spec(cache_axes[k], v.shape, mesh)) for k, v in cache.items()}
      s_logits, _, s_cache = _jit(lambda v, t, k: model.apply(v, t, cache=k),
                                  out_shardings=(None, None, cache_shardings))(
          params, jax.device_put(tokens[:, :5], sharding.batch_sharding(mesh)),
          jax.device_put(cache, cache_shardings))

  host_params = jax.tree.map(np.asarray, params)
  ref_loss, ref_grads, ref_logits, ref_cache = _single_device(c, host_params, tokens, cache)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               grads, ref_grads)
  if check_cache:
    np.testing.assert_allclose(s_logits, ref_logits, atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s_cache, ref_cache)
