"""On CPU a Projection runs as one 2-D matmul (model/layers._contract); it must equal the
N-D contraction in value and gradient, for one and two contracted axes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import layers

_contract = layers._contract  # pylint: disable=protected-access


@pytest.mark.parametrize("x_shape,w_shape,n_contract", [
    ((2, 5, 6), (6, 3, 4), 1),   # query: [B, L, D] x [D, N, H]
    ((2, 5, 3, 4), (3, 4, 6), 2),  # out:   [B, L, N, H] x [N, H, D]
])
def test_contract_equals_tensordot_in_value_and_grad(x_shape, w_shape, n_contract):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  want = np.tensordot(np.asarray(x, np.float64), np.asarray(w, np.float64), n_contract)
  got = _contract(x, w, n_contract)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  grads = jax.grad(loss(lambda x, w: _contract(x, w, n_contract)), argnums=(0, 1))(x, w)
  want_grads = jax.grad(loss(lambda x, w: jnp.tensordot(x, w, n_contract)), argnums=(0, 1))(x, w)
  for g, wg in zip(grads, want_grads):
    np.testing.assert_allclose(g, wg, rtol=1e-5, atol=1e-5)


def test_cpu_projection_lowers_to_a_2d_matmul():
  """The N-D form made XLA:CPU write the weight gradient's operand transposed (2x slower)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the 2-D form is the CPU path")
  x = jnp.ones((2, 5, 6), jnp.float32)
  w = jnp.ones((6, 3, 4), jnp.float32)
  text = jax.jit(lambda x, w: _contract(x, w, 1)).lower(x, w).as_text()
  operands = re.findall(r"dot_general.*?\(tensor<([0-9x]+)xf32>, tensor<([0-9x]+)xf32>\)", text)
  assert operands == [("10x6", "6x12")], operands
