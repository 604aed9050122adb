"""Decoder programs: batching, determinism, no recompilation, beam/best-of-N/score wiring,
prompt tuning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import sampling
from infer.decode import Decoder
from model import sharding
from model.config import ModelConfig
from model.peft import PeftConfig
from model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     max_len=64, init_std=0.5)  # large init: peaked, non-trivial distributions


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params = Transformer(CONFIG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.unbox(params)
  return Decoder(CONFIG, mesh), params


_forward = jax.jit(lambda params, tokens: Transformer(CONFIG).apply({"params": params}, tokens)[0])


def _greedy_reference(params, prompt, n, forward=None):
  """Token-by-token greedy decoding with full causal forward passes (no cache).

  The sequence is right-padded to a fixed width: causality makes the padding invisible.
  """
  tokens = list(prompt)
  for _ in range(n):
    padded = np.zeros((1, 32), np.int32)
    padded[0, :len(tokens)] = tokens
    logits = (forward or _forward)(params, jnp.asarray(padded))
    tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
  return tokens[len(prompt):]


PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [40]]


def test_batched_greedy_matches_single_rows_and_full_forward(setup):
  decoder, params = setup
  greedy = sampling.make_sampling_params(len(PROMPTS), "greedy")
  batched = decoder.generate(params, PROMPTS, 10, greedy)
  for row, prompt in enumerate(PROMPTS):
    alone = decoder.generate(params, [prompt], 10, sampling.make_sampling_params(1, "greedy"))
    assert batched.tokens[row] == alone.tokens[0]
    assert batched.tokens[row] == _greedy_reference(params, prompt, 10)
    np.testing.assert_allclose(batched.logprobs[row], alone.logprobs[0], atol=1e-5)


def test_same_seed_same_output_and_no_recompilation(setup):
  decoder, params = setup
  def run(seed, **kw):
    params_sampling = sampling.make_sampling_params(len(PROMPTS), "custom", **kw)
    return decoder.generate(params, PROMPTS, 8, params_sampling, seed=seed).tokens
  first = run(0, temperature=1.0, top_k=5, top_p=0.9)
  traces = decoder.trace_count
  assert run(0, temperature=1.0, top_k=5, top_p=0.9) == first
  assert run(1, temperature=1.0, top_k=5, top_p=0.9) != first
  run(3, temperature=0.3, top_k=0, top_p=1.0)
  run(4, temperature=[0.0, 2.0, 0.7], top_k=[1, 0, 7], top_p=[1.0, 0.5, 0.95])
  assert decoder.trace_count == traces


def test_eos_stops_rows_and_generation(setup):
  decoder, params = setup
  greedy = sampling.make_sampling_params(1, "greedy")
  free = decoder.generate(params, [PROMPTS[0]], 10, greedy).tokens[0]
  eos = free[3]
  stopped = decoder.generate(params, [PROMPTS[0]], 10, greedy, eos_id=eos)
  assert stopped.tokens[0] == free[:free.index(eos) + 1]
  assert stopped.finish_reasons == ["eos"]


def test_beam_with_one_beam_is_greedy(setup):
  decoder, params = setup
  greedy = decoder.generate(params, PROMPTS, 6, sampling.make_sampling_params(3, "greedy"))
  beam = decoder.beam_search(params, PROMPTS, 6, num_beams=1, length_penalty=0.0)
  assert beam.tokens == greedy.tokens


def test_wider_beam_scores_at_least_greedy(setup):
  decoder, params = setup
  beam = decoder.beam_search(params, PROMPTS, 6, num_beams=4, length_penalty=0.0)
  greedy = decoder.generate(params, PROMPTS, 6, sampling.make_sampling_params(3, "greedy"))
  for row in range(len(PROMPTS)):
    greedy_score = sum(decoder.score(params, [PROMPTS[row]], [greedy.tokens[row]])[0])
    beam_score = sum(decoder.score(params, [PROMPTS[row]], [beam.tokens[row]])[0])
    assert beam_score >= greedy_score - 1e-4
    assert beam.scores[row] == pytest.approx(beam_score, abs=1e-3)


def test_score_matches_generation_logprobs(setup):
  decoder, params = setup
  out = decoder.generate(params, PROMPTS, 5, sampling.make_sampling_params(3, "random"), seed=7)
  scored = decoder.score(params, PROMPTS, out.tokens)
  for row in range(len(PROMPTS)):
    np.testing.assert_allclose(scored[row], out.logprobs[row], atol=1e-4)


def test_best_of_n_picks_highest_mean_logprob(setup):
  decoder, params = setup
  params_sampling = sampling.make_sampling_params(1, "random")
  best = decoder.best_of_n(params, [PROMPTS[0]], 5, params_sampling, n=4, seed=3)
  draws = decoder.generate(params, [PROMPTS[0]] * 4, 5,
                           sampling.make_sampling_params(4, "random"), seed=3)
  means = [np.mean(lp) for lp in draws.logprobs]
  assert best.scores[0] == pytest.approx(max(means), abs=1e-5)
  assert best.tokens[0] == draws.tokens[int(np.argmax(means))]


@pytest.mark.parametrize("prompts,message", [([[]], "empty prompt"),
                                              ([list(range(64))], "context")])
def test_bad_prompts(setup, prompts, message):
  decoder, params = setup
  with pytest.raises(ValueError, match=message):
    decoder.generate(params, prompts, 4, sampling.make_sampling_params(1, "greedy"))


# ---- prompt tuning: the soft prompt sits in the cache ahead of every prompt ----

PROMPT_PEFT = PeftConfig(method="prompt_tuning", prompt_length=5)


@pytest.fixture(scope="module")
def prompt_setup():
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  model = Transformer(CONFIG, PROMPT_PEFT)
  params = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  params["soft_prompt"] = jax.random.normal(jax.random.key(2), params["soft_prompt"].shape)
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t)[0])
  return Decoder(CONFIG, mesh, PROMPT_PEFT), params, forward


def test_prompt_tuning_cached_decode_matches_full_forward(prompt_setup):
  decoder, params, forward = prompt_setup
  greedy = decoder.generate(params, PROMPTS, 8, sampling.make_sampling_params(3, "greedy"))
  for row, prompt in enumerate(PROMPTS):
    assert greedy.tokens[row] == _greedy_reference(params, prompt, 8, forward)
  # Without the soft prompt the same weights continue differently.
  plain = _greedy_reference({k: v for k, v in params.items() if k != "soft_prompt"},
                            PROMPTS[1], 8)
  assert plain != greedy.tokens[1]
  scored = decoder.score(params, PROMPTS, greedy.tokens)
  for row in range(len(PROMPTS)):
    np.testing.assert_allclose(scored[row], greedy.logprobs[row], atol=1e-4)


def test_prompt_tuning_context_includes_soft_prompt(prompt_setup):
  decoder, params, _ = prompt_setup
  assert decoder.max_new_tokens_for([[1] * 50], 100) == 64 - 5 - 50
  with pytest.raises(ValueError, match="soft prompt"):
    decoder.generate(params, [[1] * 59], 2, sampling.make_sampling_params(1, "greedy"))
  with pytest.raises(ValueError, match="soft prompt"):
    decoder.score(params, [[1] * 40], [[2] * 20])
  out = decoder.generate(params, [[1] * 58], 4, sampling.make_sampling_params(1, "greedy"))
  assert len(out.tokens[0]) == 1


def test_a_new_length_penalty_does_not_recompile_beam_search(setup):
  decoder, params = setup
  first = decoder.beam_search(params, PROMPTS[:1], 4, num_beams=2, length_penalty=1.0)
  traces = decoder.trace_count
  decoder.beam_search(params, PROMPTS[:1], 4, num_beams=2, length_penalty=0.3)
  decoder.beam_search(params, PROMPTS[:1], 4, num_beams=2, length_penalty=-0.5)
  assert decoder.trace_count == traces
  again = decoder.beam_search(params, PROMPTS[:1], 4, num_beams=2, length_penalty=1.0)
  assert again.tokens == first.tokens and again.scores == first.scores


def test_each_row_gets_its_own_token_budget(setup):
  """A short prompt batched with one near the context limit still gets all it asked for."""
  decoder, params = setup
  long_prompt = [(i % 40) + 1 for i in range(58)]  # room for 6 new tokens in max_len 64
  short_prompt = [3, 4, 5]
  greedy = lambda n: sampling.make_sampling_params(n, "greedy")
  out = decoder.generate(params, [long_prompt, short_prompt], 12, greedy(2))
  assert len(out.tokens[0]) == 6 and len(out.tokens[1]) == 12
  assert out.finish_reasons == ["length", "length"]
  alone = decoder.generate(params, [short_prompt], 12, greedy(1))
  assert out.tokens[1] == alone.tokens[0]
  assert out.tokens[1] == _greedy_reference(params, short_prompt, 12)
