"""PEFT: LoRA / adapters / prompt tuning start at the base model, merge == unmerged, which
leaves train, tree utilities, and LoRA sharded on 8 simulated devices."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import peft as peft_lib
from model import sharding
from model.config import ModelConfig
from model.peft import PeftConfig
from model.transformer import Transformer

_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                   max_len=32)
# One scanned group: block_0 dense, block_1 MoE with one shared expert.
MOE = dataclasses.replace(BASE, n_experts=4, experts_per_token=2, moe_every=2, d_ff_expert=16,
                          n_shared_experts=1)


def _tokens(b, l, seed=0, vocab=64):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, l), 0, vocab, jnp.int32)


def _names(path):
  return tuple(str(getattr(k, "key", k)) for k in path)


def _base_params(config, tokens, seed=0, std=0.2):
  """Base-model params from numpy at a healthy scale (no RNG compile)."""
  abstract = nn.meta.unbox(jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0),
                                          tokens))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    base = 1.0 if _names(path)[-1] == "scale" else 0.0
    return jnp.asarray(base + std * rng.normal(size=leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _peft_params(config, peft, base, tokens):
  """The PEFT model's real init with the base weights grafted in."""
  fresh = nn.unbox(_jit(Transformer(config, peft).init)(jax.random.PRNGKey(1), tokens))
  return peft_lib.graft(base, fresh["params"])


def _randomize(params, leaf_name, seed=2, std=0.2, under=None):
  """Random values for leaves named leaf_name (inside a module named `under`, if given)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = _names(path)
    if names[-1] != leaf_name or (under is not None and under not in names):
      return leaf
    return jnp.asarray(std * rng.normal(size=leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, params)


@functools.cache
def _forward(config, peft=PeftConfig()):
  return _jit(lambda p, t: Transformer(config, peft).apply({"params": p}, t)[0])


def _leaf_paths(tree):
  return [_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


LORA_CASES = {
    "scan_attention_mlp": (BASE, "attention_mlp"),
    "loop_all": (dataclasses.replace(BASE, scan_layers=False), "all"),
    "moe_experts": (MOE, "experts"),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_starts_at_base_and_merge_equals_unmerged(case):
  c, targets = LORA_CASES[case]
  peft = PeftConfig(method="lora", rank=4, alpha=8.0, targets=targets)
  tokens = _tokens(2, 8)
  base = _base_params(c, tokens)
  params = _peft_params(c, peft, base, tokens)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if _names(path)[-1] == "lora_b":
      assert not np.asarray(leaf).any(), "lora_b must start at zero"
  want = _forward(c)(base, tokens)
  np.testing.assert_array_equal(_forward(c, peft)(params, tokens), want)

  params = _randomize(params, "lora_b")
  lora, frozen = peft_lib.split(params, peft)
  assert jax.tree.structure(frozen) == jax.tree.structure(base)
  assert all(p[-1] in ("lora_a", "lora_b") for p in _leaf_paths(lora))
  unmerged = _forward(c, peft)(params, tokens)
  assert np.abs(np.asarray(unmerged) - np.asarray(want)).max() > 1e-3

  merged = peft_lib.merge_lora(params, peft, c)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  np.testing.assert_allclose(_forward(c)(merged, tokens), unmerged, atol=1e-5, rtol=1e-5)
  restored = peft_lib.unmerge_lora(merged, lora, peft)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), restored, base)
  if c.is_moe:
    node = params["layers"]["block_1"]["moe"]["wi_gate"]
    want_kernel = np.asarray(node["kernel"], np.float64) + peft.lora_scale * np.einsum(
        "gedr,gerf->gedf", np.asarray(node["lora_a"], np.float64),
        np.asarray(node["lora_b"], np.float64))
    got_kernel = merged["layers"]["block_1"]["moe"]["wi_gate"]["kernel"]
    np.testing.assert_allclose(got_kernel, want_kernel, atol=1e-6)


def test_adapters_and_empty_prompt_start_at_base():
  tokens = _tokens(2, 8)
  base = _base_params(BASE, tokens)
  want = _forward(BASE)(base, tokens)
  adapters = PeftConfig(method="adapters", adapter_dim=8)
  params = _peft_params(BASE, adapters, base, tokens)
  np.testing.assert_array_equal(_forward(BASE, adapters)(params, tokens), want)
  moved = _forward(BASE, adapters)(_randomize(params, "kernel", under="adapter_mlp"), tokens)
  assert np.abs(np.asarray(moved) - np.asarray(want)).max() > 1e-3

  empty_prompt = PeftConfig(method="prompt_tuning", prompt_length=0)
  params = _peft_params(BASE, empty_prompt, base, tokens)
  assert jax.tree.structure(params) == jax.tree.structure(base)
  np.testing.assert_array_equal(_forward(BASE, empty_prompt)(params, tokens), want)


def test_prompt_tuning_equals_prepending_real_token_embeddings():
  """A soft prompt of embedding rows = the base model on [those tokens, tokens] (positions
  of real tokens start at P, prompt logits dropped)."""
  c = dataclasses.replace(BASE, pos_encoding="learned")
  p_len = 3
  peft = PeftConfig(method="prompt_tuning", prompt_length=p_len)
  tokens = _tokens(2, 8)
  base = _base_params(c, tokens)
  params = _peft_params(c, peft, base, tokens)
  fresh_prompt = np.asarray(params["soft_prompt"])
  assert fresh_prompt.shape == (p_len, c.d_model)
  prompt_ids = jnp.array([5, 17, 40], jnp.int32)
  params["soft_prompt"] = base["embed"]["embedding"][prompt_ids]
  got = _forward(c, peft)(params, tokens)
  assert got.shape == (2, 8, c.vocab_size)
  full = jnp.concatenate([jnp.broadcast_to(prompt_ids, (2, p_len)), tokens], axis=1)
  want = _forward(c)(base, full)[:, p_len:]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  table = np.asarray(base["embed"]["embedding"])
  rows = np.asarray(peft_lib.soft_prompt_from_vocab({"params": base}, jax.random.key(3), 4))
  assert rows.shape == (4, c.d_model)
  for row in rows:
    assert np.any(np.all(table == row, axis=-1)), "soft prompt rows must be embedding rows"


# ---- which leaves train ----

def _trainable_paths(config, peft):
  tokens = jnp.zeros((1, 4), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(Transformer(config, peft).init,
                                          jax.random.PRNGKey(0), tokens))["params"]
  paths = _leaf_paths(abstract)
  trainable, frozen = peft_lib.split(abstract, peft)
  assert sorted(_leaf_paths(trainable) + _leaf_paths(frozen)) == sorted(paths)
  chosen = [p for p in paths if peft_lib.is_trainable(p, peft)]
  assert sorted(chosen) == sorted(_leaf_paths(trainable))
  return abstract, trainable, frozen, chosen


# MOE, scanned: block_0 has attn (4 projections) + mlp (3); block_1 attn (4), experts (3),
# shared experts (3); plus the untied head. Each LoRA projection has 2 trainable leaves.
@pytest.mark.parametrize("peft,n_trainable", [
    (PeftConfig(method="full"), None),
    (PeftConfig(method="lora"), 2 * 8),
    (PeftConfig(method="lora", targets="attention_mlp"), 2 * (8 + 3)),
    (PeftConfig(method="lora", targets="experts"), 2 * 3),
    (PeftConfig(method="lora", targets="all"), 2 * (8 + 3 + 3 + 3 + 1)),
    (PeftConfig(method="lora", targets=r"attn\.(query|value)|head"), 2 * (4 + 1)),
    (PeftConfig(method="adapters"), 2 * 2 * 2),
    (PeftConfig(method="adapters", adapter_where="mlp"), 2 * 2),
    (PeftConfig(method="prompt_tuning", prompt_length=4), 1),
])
def test_is_trainable_picks_expected_leaves(peft, n_trainable):
  abstract, trainable, frozen, chosen = _trainable_paths(MOE, peft)
  if n_trainable is None:
    assert not frozen and len(chosen) == len(_leaf_paths(abstract))
    return
  assert len(chosen) == n_trainable
  base_paths = _leaf_paths(_trainable_paths(MOE, PeftConfig())[0])
  assert sorted(_leaf_paths(frozen)) == sorted(base_paths), "only PEFT leaves may train"
  again = peft_lib.combine(trainable, frozen)
  assert jax.tree.structure(again) == jax.tree.structure(abstract)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(abstract)):
    assert a.shape == b.shape


def test_lora_param_count_and_logical_axes():
  peft = PeftConfig(method="lora", rank=4)
  c = BASE
  abstract = jax.eval_shape(Transformer(c, peft).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 4), jnp.int32))["params"]
  trainable, _ = peft_lib.split(nn.meta.unbox(abstract), peft)
  d, n, k, h, r = c.d_model, c.n_heads, c.heads_kv, c.head_dim, 4
  per_layer = (d * r + r * n * h) + 2 * (d * r + r * k * h) + (n * h * r + r * d)
  assert peft_lib.count_params(trainable) == c.n_layers * per_layer
  query = abstract["layers"]["block_0"]["attn"]["query"]
  assert query["lora_a"].names == ("layers", "embed", "lora_rank")
  assert query["lora_b"].names == ("layers", "lora_rank", "heads", "head_dim")
  out = abstract["layers"]["block_0"]["attn"]["out"]
  assert out["lora_a"].names == ("layers", "heads", "head_dim", "lora_rank")
  assert out["lora_b"].names == ("layers", "lora_rank", "embed")


def test_tree_utility_errors_and_config_validation():
  with pytest.raises(ValueError, match="disjoint"):
    peft_lib.combine({"a": {"b": 1}}, {"a": {"b": 2}})
  assert peft_lib.combine({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
  fresh = {"m": {"kernel": jnp.zeros((2, 3)), "lora_a": jnp.zeros((2, 1))}}
  with pytest.raises(ValueError, match="m/kernel"):
    peft_lib.graft({"m": {"kernel": jnp.zeros((3, 3))}}, fresh)
  with pytest.raises(ValueError, match="other"):
    peft_lib.graft({"x": {"kernel": jnp.zeros((2, 3))}}, fresh)
  grafted = peft_lib.graft({"m": {"kernel": jnp.ones((2, 3))}}, fresh)
  assert float(grafted["m"]["kernel"].sum()) == 6 and "lora_a" in grafted["m"]
  for kwargs, field in [(dict(rank=0), "rank"), (dict(method="qlora"), "method"),
                        (dict(targets="attn.(query"), "targets"), (dict(dropout=1.0), "dropout"),
                        (dict(prompt_length=-1), "prompt_length"),
                        (dict(adapter_where="ffn"), "adapter_where")]:
    with pytest.raises(ValueError, match=f"--config.peft.{field}"):
      PeftConfig(**kwargs)


# ---- sharded LoRA on 8 simulated devices ----

def _spec(spec, ndim):
  spec = tuple(spec)
  return spec + (None,) * (ndim - len(spec))


def test_lora_sharded_matches_single_device_and_factors_follow_kernels():
  assert len(jax.devices()) >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
  c = dataclasses.replace(BASE, vocab_size=128)
  peft = PeftConfig(method="lora", rank=4, targets="all")
  model = Transformer(c, peft)
  tokens = _tokens(4, 8, vocab=128)
  base = _base_params(c, tokens, std=0.1)  # O(1) logits: float32 sums differ by ~1e-6
  params = _randomize(_peft_params(c, peft, base, tokens), "lora_b", std=0.1)
  want = _forward(c, peft)(jax.device_put(params, jax.devices()[0]), tokens)

  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with sharding.use_mesh(mesh):
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
    shardings = sharding.tree_shardings(abstract, mesh)["params"]
    placed = jax.device_put(params, shardings)
    got = _jit(lambda p, t: model.apply({"params": p}, t)[0])(
        placed, jax.device_put(tokens, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  n_checked = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(placed):
    if _names(path)[-1] != "kernel":
      continue
    node = functools.reduce(lambda t, key: t[key], _names(path)[:-1], placed)
    if "lora_a" not in node:
      continue
    a, b = node["lora_a"], node["lora_b"]
    n_lead = a.ndim + b.ndim - 2 - leaf.ndim
    split = a.ndim - 1
    kernel_spec = _spec(leaf.sharding.spec, leaf.ndim)
    assert _spec(a.sharding.spec, a.ndim) == kernel_spec[:split] + (None,), _names(path)
    assert _spec(b.sharding.spec, b.ndim) == (kernel_spec[:n_lead] + (None,)
                                              + kernel_spec[split:]), _names(path)
    n_checked += 1
  assert n_checked == 7 + 1  # 4 attention + 3 FFN projections (layers stacked), the head
  query = placed["layers"]["block_0"]["attn"]["query"]
  assert _spec(query["lora_a"].sharding.spec, 3) == (None, "fsdp", None)
  assert _spec(query["lora_b"].sharding.spec, 4) == (None, None, "tensor", None)
