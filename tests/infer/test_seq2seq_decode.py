"""Encoder-decoder decoding through infer.decode: greedy equals argmax of the full forward,
beam search equals brute force on a tiny vocabulary, every sampler and best-of-N run."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import sampling
from infer.decode import Decoder
from infer.seq2seq_decode import Seq2SeqDecoder
from model import sharding
from model.config import ModelConfig
from model.encoder_decoder import DECODER_START_ID, EncoderDecoder

VOCAB, EOS = 5, 4
CONFIG = ModelConfig(arch="encoder_decoder", vocab_size=VOCAB, d_model=32, n_layers=2,
                     n_heads=4, n_kv_heads=2, max_len=16, init_std=0.5)
SOURCES = [[1, 2, 3, 1, 2, 3, 3], [3, 1]]  # different lengths: the short one is padded


@pytest.fixture(scope="module")
def setup():
  model = EncoderDecoder(CONFIG)
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(3), tokens, source_BS=tokens)["params"])
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  decoder = Decoder(CONFIG, mesh)
  full = jax.jit(lambda p, t, s: model.apply({"params": p}, t, source_BS=s)[0])
  return model, params, decoder, full


def _logp_of(full, params, source, seqs):
  """Sum of log-probs of each sequence (teacher-forced full forward, float64 softmax)."""
  width = max(len(s) for s in seqs)
  inputs = np.zeros((len(seqs), width), np.int32)
  inputs[:, 0] = DECODER_START_ID
  for i, s in enumerate(seqs):
    inputs[i, 1:len(s)] = s[:-1]
  logits = np.asarray(full(params, jnp.asarray(inputs),
                           jnp.asarray([source] * len(seqs), jnp.int32)), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return [sum(logp[i, t, tok] for t, tok in enumerate(s)) for i, s in enumerate(seqs)]


def test_decoder_dispatches_on_arch(setup):
  assert isinstance(setup[2], Seq2SeqDecoder)


def test_greedy_equals_full_forward_argmax(setup):
  _, params, decoder, full = setup
  gen = decoder.generate(params, SOURCES, 6, sampling.make_sampling_params(2, "greedy"))
  for source, tokens in zip(SOURCES, gen.tokens):
    seq = []
    for _ in range(6):
      inputs = jnp.asarray([[DECODER_START_ID] + seq], jnp.int32)
      seq.append(int(np.argmax(full(params, inputs, jnp.asarray([source]))[0, -1])))
    assert tokens == seq
  # Log-probs reported while sampling equal the teacher-forced ones.
  for source, tokens, logprobs in zip(SOURCES, gen.tokens, gen.logprobs):
    want = np.asarray(decoder.score(params, [source], [tokens])[0])
    np.testing.assert_allclose(logprobs, want, atol=1e-4)
    np.testing.assert_allclose(sum(logprobs), _logp_of(full, params, source, [tokens])[0],
                               atol=1e-3)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_equals_brute_force(setup, length_penalty):
  _, params, decoder, full = setup
  steps = 3
  out = decoder.beam_search(params, SOURCES, steps, num_beams=25,
                            length_penalty=length_penalty, eos_id=EOS)
  for row, source in enumerate(SOURCES):
    complete = [s for n in range(1, steps + 1) for s in itertools.product(range(VOCAB), repeat=n)
                if EOS not in s[:-1] and (n == steps or s[-1] == EOS)]
    scores = [lp / len(s) ** length_penalty
              for lp, s in zip(_logp_of(full, params, source, complete), complete)]
    best = int(np.argmax(scores))
    assert tuple(out.tokens[row]) == complete[best]
    np.testing.assert_allclose(out.scores[row], scores[best], atol=1e-4)


def test_every_sampler_and_best_of_n(setup):
  _, params, decoder, _ = setup
  for method, knobs in (("random", {}), ("temperature", dict(temperature=0.7)),
                        ("top_k", dict(top_k=2)), ("top_p", dict(top_p=0.8))):
    params_sampling = sampling.make_sampling_params(2, method, **knobs)
    a = decoder.generate(params, SOURCES, 5, params_sampling, seed=1, eos_id=EOS)
    b = decoder.generate(params, SOURCES, 5, params_sampling, seed=1, eos_id=EOS)
    assert a.tokens == b.tokens, method
    assert all(1 <= len(t) <= 5 and all(0 <= x < VOCAB for x in t) for t in a.tokens)
  best = decoder.best_of_n(params, SOURCES, 5, sampling.make_sampling_params(2, "random"), n=3,
                           seed=2, eos_id=EOS)
  for source, tokens, score in zip(SOURCES, best.tokens, best.scores):
    np.testing.assert_allclose(score, np.mean(decoder.score(params, [source], [tokens])[0]),
                               atol=1e-4)
