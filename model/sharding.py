"""Device meshes and the one table that maps logical axis names to mesh axes.

Parameters carry logical names (`nn.with_logical_partitioning`), activations get
`constrain(x, names)`. Nothing else in the code base names a mesh axis directly,
except the MoE all-to-all, which runs over MESH_AXES' "expert" axis.
"""

import contextlib
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")

# Logical name -> mesh axes. Parameter names first, then activation names.
LOGICAL_RULES = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("layers", None),
    ("norm", None),
    ("position", None),
    # PEFT parameters: LoRA factors shard like their base kernel's other dims.
    ("lora_rank", None),
    ("adapter", None),
    ("soft_prompt", None),
    # Activations.
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_expert", "expert"),
    ("act_cache_length", None),
)


def resolve_mesh_shape(shape: dict, n_devices: int) -> dict:
  """Fills in a single -1 entry and checks that the product is the device count."""
  shape = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  unknown = [axis for axis, size in shape.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {unknown}")
  if any(size == 0 or size < -1 for size in shape.values()):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {shape}")
  known = math.prod(size for size in shape.values() if size != -1)
  if unknown:
    if n_devices % known:
      raise ValueError(
          f"mesh {shape} cannot be completed: {n_devices} devices are not divisible by "
          f"{known}; change --config.mesh.* so the fixed axes divide {n_devices}")
    shape[unknown[0]] = n_devices // known
  if math.prod(shape.values()) != n_devices:
    raise ValueError(
        f"mesh {shape} needs {math.prod(shape.values())} devices but {n_devices} are "
        "present; set one --config.mesh.* axis to -1 or make the product match")
  return shape


def make_mesh(shape: dict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a mesh over axes MESH_AXES from a dict of sizes (one may be -1)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_mesh_shape(shape, len(devices))
  axis_shapes = tuple(sizes[axis] for axis in MESH_AXES)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(axis_shapes, MESH_AXES, axis_types=axis_types)
  return jax.sharding.Mesh(np.asarray(devices).reshape(axis_shapes), MESH_AXES,
                           axis_types=axis_types)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh):
  """Context for tracing and running model code: sets the mesh and the logical rule table."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def current_mesh():
  """The mesh set by `use_mesh` (an AbstractMesh under tracing), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside `use_mesh`.

  Mesh axes that do not divide a dimension are dropped (see `logical_spec`).
  """
  mesh = current_mesh()
  if mesh is None or mesh.size == 1:
    return x
  spec = logical_spec(logical_axes, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def logical_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh) -> P:
  """Maps logical names to a PartitionSpec, dropping mesh axes that do not divide a dim.

  Dropping (rather than failing) lets e.g. one KV head or a small vocabulary live
  replicated on a mesh with tensor=2; the big matrices still shard.
  """
  rules = dict(LOGICAL_RULES)
  spec = []
  used = set()
  for name, dim in zip(logical_axes, shape):
    mesh_axes = rules.get(name) if name is not None else None
    if mesh_axes is None:
      spec.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    kept = []
    for axis in mesh_axes:
      size = mesh.shape[axis]
      if axis in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in kept) * size) == 0:
        kept.append(axis)
    used.update(kept)
    spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*spec)


def tree_shardings(abstract_boxed_tree, mesh: jax.sharding.Mesh):
  """NamedShardings for a pytree whose leaves may be `nn.LogicallyPartitioned` boxes.

  Leaves without logical names are replicated. The result has the unboxed structure.
  """
  def leaf_sharding(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, logical_spec(leaf.names, leaf.value.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(leaf_sharding, abstract_boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] input array: batch over all batch-like mesh axes."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
  """The global batch must be a multiple of this."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)
