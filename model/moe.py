"""Mixture-of-Experts FFN layer with expert parallelism.

`y_BLD, aux = MoeMlp(config)(x_BLD)`: a float32 router picks `experts_per_token` experts
per token (model/moe_router.py), the chosen experts' FFNs run on the token and their
outputs are summed with the router weights (model/moe_dispatch.py); always-on shared
experts are added on top.

Dispatch (config.capacity_factor):
  > 0  capacity path: each expert has C = ceil(capacity_factor * T * k / E) slots per
       group, where a group is the tokens of one batch shard (the whole batch without a
       mesh). Assignments beyond C are dropped (first choices before second choices, then
       token order); a dropped assignment adds nothing, so the transformer's residual
       carries the token through. This is the fast path on accelerators: dense einsums
       over [E, C, D] buffers.
  <= 0 dropless. `dropless_impl` picks how:
       "ragged": tokens sorted by expert, grouped matmul with lax.ragged_dot (exact and
         FLOP-minimal; the reference). On an H100 ragged_dot measured 4-60x slower than
         a dense matmul of the same FLOPs.
       "padded": the capacity path with C = T (no assignment can be dropped): dense
         einsums at E/k times the useful FLOPs and an [E, T, D] buffer per group.
       "auto" (default): "ragged" on CPU, "padded" on GPU/TPU. Not yet measured on a GPU;
         for real GPU runs prefer capacity_factor ~1.25-2 (benchmark before choosing).
       With an expert mesh axis > 1 dropless always runs "padded" (XLA:CPU has no
       ragged all-to-all).

Parallelism: under an ambient mesh with more than one device
(`with model.sharding.use_mesh(mesh):` or `jax.set_mesh(mesh)`), dispatch runs inside
`jax.shard_map`: every device routes its local tokens (the batch is sharded over
("data", "fsdp", "expert")), an all-to-all over "expert" sends each expert's buffer to the
device holding that expert, local experts run, and a second all-to-all brings the
outputs back. Expert weights enter shard_map sharded on "expert" (and on "tensor" along F,
finished by a psum over "tensor"); their fsdp-sharded embed dim is all-gathered.
The router and aux losses run outside shard_map, so the losses are global.

Weights are Projections (model/layers.py): the stacked expert kernels (params
moe/wi_gate/kernel, ...) enter shard_map through `Projection.weight()`, which folds a LoRA
update in per expert; the shared experts (moe/shared_wi_gate/kernel, ...) are called like
any dense projection.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from model import moe_dispatch
from model import moe_router
from model.config import ModelConfig, compute_dtype
from model.layers import Projection, out_proj_std
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.sharding import BATCH_AXES

DROPLESS_IMPLS = ("auto", "ragged", "padded")


class MoeMlp(nn.Module):
  """Top-k routed experts (+ optional shared experts); returns (y_BLD, aux).

  aux holds float32 scalars: "load_balance_loss" and "router_z_loss" (both unweighted;
  the train step multiplies by config.load_balance_weight / router_z_loss_weight),
  "drop_fraction" (dropped token-expert assignments / all assignments) and
  "expert_load_cv" (std / mean of assignments per expert before drops).
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  dropless_impl: str = "auto"
  quant: QuantConfig = QuantConfig()

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    c = self.config
    if not c.is_moe:
      raise ValueError("MoeMlp needs model.n_experts > 0; use the dense Mlp for n_experts=0")
    if self.dropless_impl not in DROPLESS_IMPLS:
      raise ValueError(f"dropless_impl={self.dropless_impl!r} is not one of {DROPLESS_IMPLS}")
    b, l, d = x_BLD.shape
    e, k = c.n_experts, c.experts_per_token
    dtype = compute_dtype(c)
    x_BLD = x_BLD.astype(dtype)

    # The router stays a plain float32 param outside Projection: routing math is float32
    # and the [D, E] matrix is tiny, so neither LoRA nor quantization is worth it here.
    router_DE = self.param("router_kernel", _init(c.init_std, ("embed", None)), (d, e),
                           jnp.float32)
    logits_TE = jnp.einsum("td,de->te", x_BLD.reshape(b * l, d).astype(jnp.float32),
                           router_DE)
    routing = moe_router.route(logits_TE, k, c.router_weighting)
    # Stacked expert kernels enter shard_map whole, so LoRA is merged per expert here.
    experts = _ffn_projections(c, self.peft, "expert", "", (e,), ("expert",), c.expert_ffw_dim,
                               self.quant)
    experts = {key: proj.weight().astype(dtype) for key, proj in experts.items()}

    y_BLD, n_dropped = _dispatch(
        x_BLD, routing.expert_TK.reshape(b, l, k), routing.weight_TK.reshape(b, l, k),
        experts, c, self.dropless_impl)

    if c.n_shared_experts:
      shared = _ffn_projections(c, self.peft, "shared", "shared_", (), (),
                                c.n_shared_experts * c.expert_ffw_dim, self.quant)
      y_BLD = y_BLD + moe_dispatch.ffn(x_BLD, shared, c.activation,
                                       lambda h, proj: proj(h, deterministic))

    aux = {
        "load_balance_loss": moe_router.load_balance_loss(routing.probs_TE, routing.expert_TK),
        "router_z_loss": moe_router.router_z_loss(logits_TE),
        "drop_fraction": n_dropped.astype(jnp.float32) / (b * l * k),
        "expert_load_cv": moe_router.expert_load_cv(routing.expert_TK, e),
    }
    return y_BLD, aux


def _init(std, names):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def _ffn_projections(c: ModelConfig, peft: PeftConfig, role: str, prefix: str, lead_shape,
                     lead_names, f, quant: QuantConfig = QuantConfig()) -> dict:
  """FFN projections (optionally stacked on a leading expert axis) named by c.activation."""
  d = c.d_model
  keys = ("wi_gate", "wi_up") if c.activation == "swiglu" else ("wi",)
  n_batch = len(lead_shape)
  projs = {key: Projection(c, peft, lead_shape + (d, f), lead_names + ("embed", "mlp"), 1,
                           c.init_std, f"{role}.{key}", n_batch=n_batch, quant=quant,
                           name=prefix + key)
           for key in keys}
  projs["wo"] = Projection(c, peft, lead_shape + (f, d), lead_names + ("mlp", "embed"), 1,
                           out_proj_std(c), f"{role}.wo", n_batch=n_batch, quant=quant,
                           name=prefix + "wo")
  return projs


def ambient_mesh():
  """The mesh set by `jax.set_mesh` or by a legacy `with mesh:` block; None if neither."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    from jax._src import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh = mesh_lib.thread_resources.env.physical_mesh
  if mesh is None or mesh.empty or mesh.size == 1:
    return None
  if getattr(mesh, "manual_axes", ()):
    return None  # Already inside a shard_map: treat the local block as one group.
  return mesh


def _resolve_dropless_impl(impl: str) -> str:
  if impl == "auto":
    return "ragged" if jax.default_backend() == "cpu" else "padded"
  return impl


def _dispatch(x_BLD, expert_BLK, weight_BLK, experts, c: ModelConfig, dropless_impl: str):
  """Routes to the single-group path or the shard_map path; returns (y_BLD, n_dropped)."""
  impl = _resolve_dropless_impl(dropless_impl)
  mesh = ambient_mesh()
  if mesh is None:
    y_BLD, n_dropped = _group_moe(x_BLD, expert_BLK, weight_BLK, experts, c, impl,
                                  n_ep=1, tensor_axis=None)
    return y_BLD, n_dropped

  sizes = {axis: mesh.shape.get(axis, 1) for axis in ("data", "fsdp", "tensor", "expert")}
  n_ep = sizes["expert"]
  if c.n_experts % n_ep:
    raise ValueError(
        f"model.n_experts={c.n_experts} is not divisible by the expert mesh axis ({n_ep}); "
        "set --config.mesh.expert to a divisor of n_experts")
  batch_axes = []
  for axis in BATCH_AXES:
    size = sizes[axis]
    if size > 1 and x_BLD.shape[0] % (math.prod(sizes[a] for a in batch_axes) * size) == 0:
      batch_axes.append(axis)
  batch = tuple(batch_axes) or None
  tensor_axis = ("tensor" if sizes["tensor"] > 1 and c.expert_ffw_dim % sizes["tensor"] == 0
                 else None)
  expert_axis = "expert" if n_ep > 1 else None
  in_specs_w = {key: P(expert_axis, None, tensor_axis) for key in experts if key != "wo"}
  in_specs_w["wo"] = P(expert_axis, tensor_axis, None)

  def local(x_bld, expert_blk, weight_blk, experts_local):
    y_bld, n_dropped = _group_moe(x_bld, expert_blk, weight_blk, experts_local, c, impl,
                                  n_ep=n_ep, tensor_axis=tensor_axis)
    return y_bld, n_dropped[None]

  batch_spec = P(batch, None, None)
  y_BLD, dropped_G = jax.shard_map(
      local, mesh=mesh, in_specs=(batch_spec, batch_spec, batch_spec, in_specs_w),
      out_specs=(batch_spec, P(batch)), check_vma=False,
  )(x_BLD, expert_BLK, weight_BLK, experts)
  return y_BLD, jnp.sum(dropped_G)


def _group_moe(x_BLD, expert_BLK, weight_BLK, experts, c: ModelConfig, impl: str, *,
               n_ep: int, tensor_axis):
  """MoE over one group (this device's tokens); experts are this device's shard."""
  b, l, d = x_BLD.shape
  k = expert_BLK.shape[-1]
  t = b * l
  x_TD = x_BLD.reshape(t, d)
  expert_TK = expert_BLK.reshape(t, k)
  weight_TK = weight_BLK.reshape(t, k)
  if c.capacity_factor <= 0 and impl == "ragged" and n_ep == 1:
    y_TD = moe_dispatch.dropless_moe(x_TD, expert_TK, weight_TK, experts, c.activation)
    n_dropped = jnp.zeros((), jnp.int32)
  else:
    cap = (moe_dispatch.capacity(t, k, c.n_experts, c.capacity_factor)
           if c.capacity_factor > 0 else t)
    expert_fn = _expert_parallel_fn(experts, c.activation, n_ep)
    y_TD, n_dropped = moe_dispatch.capacity_moe(x_TD, expert_TK, weight_TK, c.n_experts,
                                                cap, expert_fn)
  if tensor_axis is not None:
    y_TD = jax.lax.psum(y_TD, tensor_axis)
  return y_TD.reshape(b, l, d), n_dropped


def _expert_parallel_fn(experts_local, activation: str, n_ep: int):
  """[E, C, D] buffers of this device -> expert outputs, via all-to-all when n_ep > 1."""
  def expert_fn(x_ECD):
    if n_ep == 1:
      return moe_dispatch.buffer_ffn(x_ECD, experts_local, activation)
    e, cap, d = x_ECD.shape
    e_local = e // n_ep
    # Received rows are ordered [source device, local expert].
    x_ECD = jax.lax.all_to_all(x_ECD, "expert", 0, 0, tiled=True)
    x_ECD = x_ECD.reshape(n_ep, e_local, cap, d).transpose(1, 0, 2, 3)
    out_ECD = moe_dispatch.buffer_ffn(x_ECD.reshape(e_local, n_ep * cap, d), experts_local,
                                      activation)
    out_ECD = out_ECD.reshape(e_local, n_ep, cap, d).transpose(1, 0, 2, 3)
    return jax.lax.all_to_all(out_ECD.reshape(e, cap, d), "expert", 0, 0, tiled=True)
  return expert_fn
