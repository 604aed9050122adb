"""Weight-only quantization: int8 per output channel, int4 in groups of G input rows.

A dense kernel is viewed as 2-D, w [..., Din, Dout]: Din is the product of its contracted
(input) axes, Dout of its output axes, and leading stacked (layer / expert) axes stay.
  int8: one scale per output channel (a group is all Din rows); values in one byte.
  int4: one scale per G consecutive input rows and output channel; two values per byte
        (row 2i in the low nibble, row 2i+1 in the high one) along Din.
Symmetric: q = round(w / s), s = max|w| / qmax. Asymmetric: q = round(w / s) + z with
s = (max - min) / (2^bits - 1) over a range that contains 0, so 0 is exact. Either way
  dequantize = (q - z) * s        (z = 0 for symmetric int8, 8 for symmetric int4)
and every element inside the range is within s / 2 of its original. Stored leaves:
kernel_q (int8, or packed uint8 for int4), kernel_scale float32 [..., Din/G, Dout], and
kernel_zero (asymmetric only) shaped like the scale. Din is padded (edge rows repeated)
to a multiple of G, so any width quantizes; dequantize slices the padding off.

QAT (`fake_quant`) runs the same quantize -> dequantize in the forward pass with a
straight-through gradient: identity inside the clipping range, zero outside. Because it
is the same arithmetic, a QAT model exported with infer.quantize gives identical logits.
"""

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

SCHEMES = ("none", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
LEAVES = ("kernel_q", "kernel_scale", "kernel_zero")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """How dense projections are stored (scheme) or fake-quantized in training (qat).

  scheme: "none" | "int8" | "int4": stored weights (PTQ output, QLoRA's frozen base).
  group_size: int4 input rows per scale (32 / 64 / 128; 0 = per output channel);
    int8 is always per output channel.
  include_head: quantize the output projection too (off: it stays float, as is usual).
  include_embed: quantize the embedding table too (model/quant_embed.py; off: float).
  qat: "none" | "int8" | "int4": fake quantization in the forward with an STE.
  """
  scheme: str = "none"
  group_size: int = 64
  symmetric: bool = True
  include_head: bool = False
  include_embed: bool = False
  qat: str = "none"

  def __post_init__(self):
    for name in ("scheme", "qat"):
      if getattr(self, name) not in SCHEMES:
        raise ValueError(f"quant.{name}={getattr(self, name)!r} is not one of {SCHEMES}; "
                         f"set --config.quant.{name} (or --scheme) to one of them")
    if self.group_size < 0 or self.group_size % 2:
      raise ValueError(f"quant.group_size={self.group_size} must be 0 (per channel) or a "
                       "positive even number such as 32, 64 or 128")
    if self.scheme != "none" and self.qat != "none":
      raise ValueError("quant.scheme (stored integer weights) and quant.qat (fake "
                       "quantization of float weights) exclude each other; set one")

  @property
  def stored(self) -> bool:
    return self.scheme != "none"

  def applies(self, role: str) -> bool:
    """Whether the projection with this role is quantized (stored or fake)."""
    if self.scheme == "none" and self.qat == "none":
      return False
    if role.startswith("adapter."):
      return False  # adapters are PEFT parameters: they train in float
    if role == "embed":
      return self.include_embed
    return role != "head" or self.include_head

  def group(self, scheme: str) -> int:
    return self.group_size if scheme == "int4" else 0


def effective(quant: QuantConfig, base_quant: str = "none") -> QuantConfig:
  """The model's quant config: `base_quant` (QLoRA's peft.base_quant) sets the scheme."""
  if base_quant == "none":
    return quant
  if quant.qat != "none":
    raise ValueError("peft.base_quant (QLoRA) and quant.qat (QAT) exclude each other; set one")
  return dataclasses.replace(quant, scheme=base_quant)


# -- the arithmetic ---------------------------------------------------------------------------

def _levels(bits: int, symmetric: bool):
  """(lowest, highest) integer level: +-(2^(bits-1) - 1) symmetric, [0, 2^bits - 1] not."""
  if symmetric:
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax
  return 0, 2 ** bits - 1


def _group_rows(din: int, group_size: int) -> tuple[int, int]:
  """(rows per group G, padded Din)."""
  g = din if group_size <= 0 else group_size
  return g, -(-din // g) * g


def scales(w, bits: int, group_size: int = 0, symmetric: bool = True):
  """(scale, zero or None) of w [..., Din, Dout], each [..., n_groups, Dout] float32.

  The zero point is returned as a float holding an integer in [0, 2^bits - 1].
  """
  w = jnp.asarray(w, jnp.float32)
  din, dout = w.shape[-2:]
  g, padded = _group_rows(din, group_size)
  w = _pad_rows(w, padded)
  w_g = w.reshape(w.shape[:-2] + (padded // g, g, dout))
  lo, hi = _levels(bits, symmetric)
  if symmetric:
    s = jnp.max(jnp.abs(w_g), axis=-2) / hi
    return jnp.where(s > 0, s, 1.0), None
  w_min = jnp.minimum(jnp.min(w_g, axis=-2), 0.0)
  w_max = jnp.maximum(jnp.max(w_g, axis=-2), 0.0)
  s = (w_max - w_min) / (hi - lo)
  s = jnp.where(s > 0, s, 1.0)
  z = jnp.clip(jnp.round(-w_min / s), lo, hi)
  return s, z


def _pad_rows(w, padded: int):
  din = w.shape[-2]
  if padded == din:
    return w
  pad = [(0, 0)] * (w.ndim - 2) + [(0, padded - din), (0, 0)]
  return jnp.pad(w, pad, mode="edge")


def _expand(x_GO, g: int):
  """[..., n_groups, Dout] -> [..., n_groups * g, Dout] (each group row repeated g times)."""
  return jnp.repeat(x_GO, g, axis=-2)


def _to_int(w, s, z, bits: int, symmetric: bool):
  """Integer levels (as float32) of w [..., Dpad, Dout] under per-group s, z."""
  lo, hi = _levels(bits, symmetric)
  g = w.shape[-2] // s.shape[-2]
  q = jnp.round(w / _expand(s, g))
  if z is not None:
    q = q + _expand(z, g)
  return jnp.clip(q, lo, hi)


def _from_int(q, s, z, rows: int):
  """(q - z) * s sliced to `rows` input rows: the one dequantization formula."""
  g = q.shape[-2] // s.shape[-2]
  if z is not None:
    q = q - _expand(z, g)
  return (q * _expand(s, g))[..., :rows, :]


def pack_int4(u):
  """Unsigned nibbles [..., 2n, Dout] (values 0..15) -> uint8 [..., n, Dout]."""
  u = jnp.asarray(u).astype(jnp.uint8)
  if u.shape[-2] % 2:
    raise ValueError(f"pack_int4 needs an even number of rows, got {u.shape[-2]}")
  pairs = u.reshape(u.shape[:-2] + (u.shape[-2] // 2, 2, u.shape[-1]))
  return pairs[..., 0, :] | (pairs[..., 1, :] << 4)


def unpack_int4(p):
  """uint8 [..., n, Dout] -> unsigned nibbles uint8 [..., 2n, Dout] (inverse of pack_int4)."""
  p = jnp.asarray(p)
  lo, hi = p & 0xF, p >> 4
  both = jnp.stack([lo, hi], axis=-2)
  return both.reshape(p.shape[:-2] + (2 * p.shape[-2], p.shape[-1]))


def quantize(w, scheme: str, group_size: int = 64, symmetric: bool = True) -> dict:
  """w [..., Din, Dout] -> {"kernel_q", "kernel_scale"[, "kernel_zero"]} (see module doc)."""
  if scheme not in BITS:
    raise ValueError(f"quantize: scheme {scheme!r} is not one of {sorted(BITS)}")
  bits = BITS[scheme]
  group_size = group_size if scheme == "int4" else 0
  w = jnp.asarray(w, jnp.float32)
  din = w.shape[-2]
  g, padded = _group_rows(din, group_size)
  if scheme == "int4" and g % 2:
    raise ValueError(f"int4 packs two rows per byte: the group ({g} rows) must be even")
  s, z = scales(w, bits, group_size, symmetric)
  q = _to_int(_pad_rows(w, padded), s, z, bits, symmetric)
  out = {"kernel_scale": s}
  if scheme == "int4":
    offset = 8 if symmetric else 0  # stored as unsigned nibbles
    out["kernel_q"] = pack_int4(q + offset)
    if not symmetric:
      out["kernel_zero"] = z.astype(jnp.uint8)
  else:
    offset = 0 if symmetric else -128  # asymmetric [0, 255] shifted into int8
    out["kernel_q"] = (q + offset).astype(jnp.int8)
    if not symmetric:
      out["kernel_zero"] = (z + offset).astype(jnp.int8)
  return out


def dequantize(qparams: Mapping, rows: int | None = None):
  """float32 [..., rows, Dout] from quantize's dict; `rows` drops Din padding (default: none)."""
  q, s = qparams["kernel_q"], qparams["kernel_scale"]
  z = qparams.get("kernel_zero")
  if q.dtype == jnp.uint8:  # packed int4
    q = unpack_int4(q).astype(jnp.float32)
    z = jnp.full(s.shape, 8.0, jnp.float32) if z is None else z.astype(jnp.float32)
  else:
    q = q.astype(jnp.float32)
    z = None if z is None else z.astype(jnp.float32)
  return _from_int(q, s, z, q.shape[-2] if rows is None else rows)


def quantized_shapes(lead: tuple, din: int, dout: int, scheme: str, group_size: int,
                     symmetric: bool) -> dict:
  """{leaf name: (shape, dtype)} of the stored leaves for a [*lead, din, dout] kernel."""
  g, padded = _group_rows(din, group_size if scheme == "int4" else 0)
  n_groups = padded // g
  if scheme == "int4":
    shapes = {"kernel_q": (lead + (padded // 2, dout), jnp.uint8)}
    zero_dtype = jnp.uint8
  else:
    shapes = {"kernel_q": (lead + (padded, dout), jnp.int8)}
    zero_dtype = jnp.int8
  shapes["kernel_scale"] = (lead + (n_groups, dout), jnp.float32)
  if not symmetric:
    shapes["kernel_zero"] = (lead + (n_groups, dout), zero_dtype)
  return shapes


# -- QAT ----------------------------------------------------------------------------------------

@jax.custom_vjp
def _ste(w, dq, in_range):
  del w, in_range
  return dq


def _ste_fwd(w, dq, in_range):
  return dq, in_range


def _ste_bwd(in_range, g):
  return g * in_range.astype(g.dtype), jnp.zeros_like(g), None


_ste.defvjp(_ste_fwd, _ste_bwd)


def fake_quant_with(w, s, z, bits: int, symmetric: bool, group_size: int = 0):
  """dequantize(quantize(w)) under given scales [..., n_groups, Dout] (w [..., Din, Dout]).

  The forward value is exactly the PTQ dequantization; the gradient is the identity for
  elements inside the clipping range [(lo - z) s - s/2, (hi - z) s + s/2] and zero outside.
  """
  w = jnp.asarray(w, jnp.float32)
  din = w.shape[-2]
  g, padded = _group_rows(din, group_size)
  n_groups = padded // g
  if s.shape[-2] != n_groups:
    raise ValueError(f"fake_quant_with: {s.shape[-2]} scale groups for {din} rows in groups "
                     f"of {g}; expected {n_groups}")
  s, z = jax.lax.stop_gradient(s), None if z is None else jax.lax.stop_gradient(z)
  w_pad = _pad_rows(jax.lax.stop_gradient(w), padded)
  q = _to_int(w_pad, s, z, bits, symmetric)
  lo, hi = _levels(bits, symmetric)
  unclipped = jnp.round(w_pad / _expand(s, g)) + (0.0 if z is None else _expand(z, g))
  in_range = ((unclipped >= lo) & (unclipped <= hi))[..., :din, :]
  if bits == 4 and symmetric:
    # The stored form of symmetric int4 is (nibble - 8) * s: the same value, the same way.
    dq = _from_int(q + 8.0, s, jnp.full(s.shape, 8.0, jnp.float32), din)
  else:
    dq = _from_int(q, s, z, din)
  return _ste(w, dq, in_range)


def fake_quant(w, scheme: str, group_size: int = 64, symmetric: bool = True):
  """QAT forward of w [..., Din, Dout]: scales from w itself (no gradient through them)."""
  bits = BITS[scheme]
  group_size = group_size if scheme == "int4" else 0
  s, z = scales(jax.lax.stop_gradient(w), bits, group_size, symmetric)
  return fake_quant_with(w, s, z, bits, symmetric, group_size)


# -- whole parameter trees ----------------------------------------------------------------------

def _unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.meta.unbox(tree)


def quantize_params(params, abstract_quantized, quant: QuantConfig):
  """Float params -> the tree of a model built with `quant`: every kernel whose target
  node holds kernel_q is quantized; everything else is copied.

  `abstract_quantized` (e.g. jax.eval_shape of the quantized model's init, or
  infer.loading.abstract_params) gives each kernel's 2-D view: its scale's last dim is
  Dout and its leading dims are the stacked (layer / expert) axes. An embedding table
  [V, D] is quantized as its transpose (model/quant_embed.py).
  """
  params, target = _unbox(params), _unbox(abstract_quantized)

  def walk(p, t, path):
    if "kernel_q" in t and ("kernel" in p or "embedding" in p):
      kernel = p["kernel"] if "kernel" in p else jnp.asarray(p["embedding"]).T
      scale = t["kernel_scale"]
      n_lead = len(scale.shape) - 2
      w = jnp.asarray(kernel).reshape(kernel.shape[:n_lead] + (-1, scale.shape[-1]))
      out = quantize(w, quant.scheme, quant.group_size, quant.symmetric)
      for name, value in out.items():
        want = t.get(name)
        if want is None or tuple(want.shape) != value.shape:
          raise ValueError(f"quantize_params: {'/'.join(path)}/{name} has shape {value.shape}"
                           f" but the quantized model expects "
                           f"{None if want is None else want.shape}")
      rest = {k: v for k, v in p.items() if k not in ("kernel", "embedding")}
      return {**rest, **out}
    out = {}
    for key, value in p.items():
      if isinstance(value, Mapping):
        if key not in t:
          raise ValueError(f"quantize_params: {'/'.join(path + (key,))} is not in the "
                           "quantized model; build it with the same model config")
        out[key] = walk(value, t[key], path + (key,))
      else:
        out[key] = value
    return out
  return walk(params, target, ())


def kernel_shapes(abstract_float_params) -> dict:
  """{path tuple: kernel shape} of every projection of a float model's (abstract) params;
  embedding tables are keyed by path + ("embedding",)."""
  out = {}

  def walk(p, path):
    for key, value in p.items():
      if isinstance(value, Mapping):
        walk(value, path + (key,))
      elif key == "kernel":
        out[path] = tuple(value.shape)
      elif key == "embedding":
        out[path + (key,)] = tuple(value.shape)
  walk(_unbox(abstract_float_params), ())
  return out


def dequantize_params(params, kernel_shapes):
  """A quantized tree -> float kernels, given {path tuple: kernel shape} of the float model."""
  params = _unbox(params)

  def walk(p, path):
    if "kernel_q" in p and path + ("embedding",) in kernel_shapes:  # a [V, D] table
      vocab, d_model = kernel_shapes[path + ("embedding",)]
      rest = {k: v for k, v in p.items() if k not in LEAVES}
      return {**rest, "embedding": dequantize(p, d_model).T[:vocab]}
    if "kernel_q" in p:
      shape = kernel_shapes[path]
      w = dequantize(p)
      n_lead = w.ndim - 2
      din = math.prod(shape) // math.prod(shape[:n_lead]) // w.shape[-1]
      rest = {k: v for k, v in p.items() if k not in LEAVES}
      return {**rest, "kernel": w[..., :din, :].reshape(shape)}
    return {k: walk(v, path + (k,)) if isinstance(v, Mapping) else v for k, v in p.items()}
  return walk(params, ())


def projection_bytes(float_params, quantized_params) -> tuple[int, int]:
  """(float bytes, stored bytes) of just the kernels that were quantized."""
  before = after = 0

  def walk(f, q):
    nonlocal before, after
    if "kernel_q" in q:
      before += tree_bytes(f["kernel"] if "kernel" in f else f["embedding"])
      after += tree_bytes({k: v for k, v in q.items() if k in LEAVES})
      return
    for key, value in q.items():
      if isinstance(value, Mapping):
        walk(f[key], value)
  walk(_unbox(float_params), _unbox(quantized_params))
  return before, after


def tree_bytes(tree) -> int:
  """Bytes of every array in a (possibly boxed) tree."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(_unbox(tree))))
