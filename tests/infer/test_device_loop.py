"""On-device generation (infer/sample_loop.py via Decoder.generate) against a step-per-dispatch
reference: same tokens and log-probs for the same seed, per-row eos / stop / caps, chunking
invisible, no retrace when knobs change, prefill logits of the last prompt token only."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import sampling
from infer.decode import Decoder
from model import sharding
from model.config import ModelConfig
from model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     max_len=64, init_std=0.5)
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [40], [7, 7]]


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params = Transformer(CONFIG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return Decoder(CONFIG, mesh), nn.unbox(params)


_sample = jax.jit(sampling.sample_tokens_with_logprobs)


def stepwise_generate(decoder, params, prompts, max_new_tokens, params_sampling, seed=0,
                      eos_id=None, stop_fn=None):
  """Reference: one decode_step dispatch per token, stop conditions checked after each."""
  caps = [max(1, min(max_new_tokens, CONFIG.max_len - len(p))) for p in prompts]
  logits_BV, cache = decoder.prefill(params, prompts, max(caps))
  rng = jax.random.key(seed)
  tokens_B, logprobs_B = _sample(jax.random.fold_in(rng, 0), logits_BV, params_sampling)
  out_tokens = [[] for _ in prompts]
  out_logprobs = [[] for _ in prompts]
  reasons = [None] * len(prompts)
  for t in range(1, max(caps) + 1):
    for row, (token, logprob) in enumerate(zip(np.asarray(tokens_B).tolist(),
                                               np.asarray(logprobs_B).tolist())):
      if reasons[row] is not None:
        continue
      out_tokens[row].append(token)
      out_logprobs[row].append(logprob)
      if eos_id is not None and token == eos_id:
        reasons[row] = "eos"
      elif stop_fn is not None and stop_fn(row, out_tokens[row]):
        reasons[row] = "stop"
      elif len(out_tokens[row]) >= caps[row]:
        reasons[row] = "length"
    if all(reasons):
      break
    tokens_B, logprobs_B, cache = decoder.decode_step(
        params, cache, tokens_B, jax.random.fold_in(rng, t), params_sampling)
  return out_tokens, out_logprobs, reasons


def _custom(n):
  return sampling.make_sampling_params(n, "custom", temperature=[0.0, 1.0, 0.8, 1.3][:n],
                                       top_k=[0, 5, 0, 3][:n], top_p=[1.0, 1.0, 0.9, 0.7][:n])


def _check_same(out, ref):
  tokens, logprobs, reasons = ref
  assert out.tokens == tokens
  assert out.finish_reasons == reasons
  for row in range(len(tokens)):
    np.testing.assert_allclose(out.logprobs[row], logprobs[row], atol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "custom"])
def test_device_loop_matches_stepwise_reference(setup, method):
  decoder, params = setup
  params_sampling = (sampling.make_sampling_params(4, "greedy") if method == "greedy"
                     else _custom(4))
  out = decoder.generate(params, PROMPTS, 12, params_sampling, seed=3)
  _check_same(out, stepwise_generate(decoder, params, PROMPTS, 12, params_sampling, seed=3))
  assert all(len(t) == 12 for t in out.tokens)
  assert out.decode_steps == 11  # no model step after the last token
  assert out.decode_seconds > 0 and out.prefill_seconds > 0


def test_chunking_is_invisible(setup):
  decoder, params = setup
  params_sampling = _custom(4)
  whole = decoder.generate(params, PROMPTS, 12, params_sampling, seed=5)
  decoder.steps_per_dispatch = 5  # 12 tokens over three dispatches
  try:
    chunked = decoder.generate(params, PROMPTS, 12, params_sampling, seed=5)
  finally:
    decoder.steps_per_dispatch = 64
  assert chunked.tokens == whole.tokens
  assert chunked.decode_steps == whole.decode_steps == 11


def test_eos_per_row_and_early_exit(setup):
  decoder, params = setup
  params_sampling = _custom(4)
  free = decoder.generate(params, PROMPTS, 12, params_sampling, seed=1)
  eos = free.tokens[1][2]
  out = decoder.generate(params, PROMPTS, 12, params_sampling, seed=1, eos_id=eos)
  ref = stepwise_generate(decoder, params, PROMPTS, 12, params_sampling, seed=1, eos_id=eos)
  _check_same(out, ref)
  assert out.finish_reasons[1] == "eos" and len(out.tokens[1]) <= 3
  for row in range(len(PROMPTS)):
    cut = free.tokens[row].index(eos) + 1 if eos in free.tokens[row] else 12
    assert out.tokens[row] == free.tokens[row][:cut]
  # When every row ends with eos, the loop stops there instead of running to the cap.
  greedy = sampling.make_sampling_params(1, "greedy")
  alone = decoder.generate(params, [PROMPTS[0]], 12, greedy)
  early = decoder.generate(params, [PROMPTS[0]], 12, greedy, eos_id=alone.tokens[0][1])
  assert early.tokens[0] == alone.tokens[0][:alone.tokens[0].index(alone.tokens[0][1]) + 1]
  assert early.decode_steps == len(early.tokens[0]) - 1


def test_stop_fn_per_row_checked_between_chunks(setup):
  decoder, params = setup
  params_sampling = _custom(4)
  calls = []

  def stop_fn(row, tokens):
    calls.append(row)
    return len(tokens) == row + 2 and row != 3  # row 3 runs to its cap

  decoder.steps_per_stop_check = 3
  try:
    out = decoder.generate(params, PROMPTS, 10, params_sampling, seed=2, stop_fn=stop_fn)
  finally:
    decoder.steps_per_stop_check = 16
  ref = stepwise_generate(decoder, params, PROMPTS, 10, params_sampling, seed=2,
                          stop_fn=stop_fn)
  _check_same(out, ref)
  assert out.finish_reasons == ["stop", "stop", "stop", "length"]
  assert [len(t) for t in out.tokens] == [2, 3, 4, 10]


def test_all_rows_stopped_ends_generation(setup):
  decoder, params = setup
  out = decoder.generate(params, PROMPTS, 40, _custom(4), seed=0,
                         stop_fn=lambda row, tokens: len(tokens) >= 2)
  assert [len(t) for t in out.tokens] == [2, 2, 2, 2]
  assert out.decode_steps <= decoder.steps_per_stop_check  # one chunk, not 40 steps


def test_no_retrace_when_knobs_seed_eos_or_caps_change(setup):
  decoder, params = setup
  decoder.generate(params, PROMPTS, 8, _custom(4), seed=0)
  traces = decoder.trace_count
  for seed, (t, k, p) in enumerate([(0.3, 0, 1.0), (1.0, 7, 0.5), (2.0, 1, 0.95)]):
    ps = sampling.make_sampling_params(4, "custom", temperature=t, top_k=k, top_p=p)
    decoder.generate(params, PROMPTS, 8, ps, seed=seed + 10, eos_id=seed + 4)
  decoder.generate(params, PROMPTS, 5, sampling.make_sampling_params(4, "greedy"), seed=9)
  assert decoder.trace_count == traces


def test_prefill_returns_last_prompt_token_logits(setup):
  decoder, params = setup
  logits_BV, cache = decoder.prefill(params, PROMPTS, 4)
  assert logits_BV.shape == (len(PROMPTS), CONFIG.vocab_size)
  np.testing.assert_array_equal(cache["lengths"], [len(p) for p in PROMPTS])
  for row, prompt in enumerate(PROMPTS):
    full_1LV, _ = Transformer(CONFIG).apply({"params": params}, jnp.asarray([prompt]))
    np.testing.assert_allclose(logits_BV[row], full_1LV[0, -1], atol=1e-4, rtol=1e-4)


def test_sampling_params_rows_must_match_prompts(setup):
  decoder, params = setup
  with pytest.raises(ValueError, match="make_sampling_params"):
    decoder.generate(params, PROMPTS, 4, sampling.make_sampling_params(2, "greedy"))


def test_batch_sharded_generation_matches_one_device(setup):
  decoder, params = setup
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  sharded = Decoder(CONFIG, mesh)
  params_sampling = _custom(4)
  want = decoder.generate(params, PROMPTS, 6, params_sampling, seed=4)
  got = sharded.generate(params, PROMPTS, 6, params_sampling, seed=4)
  assert got.tokens == want.tokens
  for row in range(len(PROMPTS)):
    np.testing.assert_allclose(got.logprobs[row], want.logprobs[row], atol=1e-5)
