"""Parameters from a Hugging Face checkpoint onto a mesh, and back to HF tensors, streamed.

`load_params` builds every leaf with `jax.make_array_from_callback`: each device's shard
is cut from the memory-mapped safetensors one layer at a time, so host memory holds one
HF tensor plus one shard, never the model. `export_tensors` yields (HF name, numpy array)
pairs one at a time, fetching one layer's slice of a leaf at a time.
"""

import json
import os
from typing import Iterator

import flax.linen as nn
import jax
import numpy as np

from model.config import ModelConfig
from model.hf import configs, weights
from model.hf.safetensors_io import Reader
from model.transformer import group_size

CONFIG_FILE = "config.json"


def read_hf_config(hf_dir: str) -> dict:
  """config.json of a HF model directory; a missing directory or file is a clear error."""
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"--hf_dir={hf_dir!r} is not a directory; pass a local Hugging "
                            "Face model directory (config.json + *.safetensors + tokenizer)")
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {hf_dir}; pass a Hugging Face model "
                            "directory (the one save_pretrained writes)")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); re-copy it") from None


def _paths(tree, prefix=()) -> Iterator[tuple]:
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _paths(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _rule_output(reader: Reader, source: weights.LeafSource, prefix: str, layer, want_shape):
  """Our array (one layer's, for layer leaves) computed from the HF tensors of `source`."""
  names = weights.hf_names(source.rule, prefix, layer)
  missing = [n for n in names if n not in reader]
  if missing:
    raise ValueError(f"the checkpoint in {reader.directory} lacks tensor(s) {missing[:3]} that "
                     "its config.json implies; the files do not match the config")
  try:
    out = source.rule.to_ours([reader.get(n) for n in names])[source.position]
  except ValueError as e:
    shapes = {n: reader.shape(n) for n in names}
    raise ValueError(f"HF tensor(s) {shapes} do not fit our leaf of shape {want_shape} ({e}); "
                     "the checkpoint does not match its config.json") from None
  if tuple(out.shape) != tuple(want_shape):
    raise ValueError(f"HF tensor(s) {names} give shape {out.shape}, expected {want_shape}")
  return out


def load_params(reader: Reader, config: ModelConfig, model_type: str, abstract_params):
  """The params tree of `abstract_params` (ShapeDtypeStructs with shardings, scanned
  layout) filled from `reader`; unused non-buffer HF tensors are an error."""
  if not config.scan_layers:
    raise ValueError("import builds the scanned layout; set model.scan_layers=True")
  sources = weights.leaf_sources(config, model_type)
  prefix = weights.hf_prefix(set(reader.names()), model_type)
  g = group_size(config)
  used, params = set(), {}
  for path, leaf in _paths(nn.meta.unbox(abstract_params)):
    if path not in sources:
      raise ValueError(f"no Hugging Face tensor maps to parameter {'/'.join(path)}; this "
                       f"{model_type} converter does not cover that model option")
    source = sources[path]
    if source.block is None:
      used.update(weights.hf_names(source.rule, prefix))

      def callback(index, source=source, leaf=leaf):
        full = _rule_output(reader, source, prefix, None, leaf.shape)
        return np.ascontiguousarray(full[index], dtype=np.float32)
    else:
      for group in range(leaf.shape[0]):
        used.update(weights.hf_names(source.rule, prefix, group * g + source.block))

      def callback(index, source=source, leaf=leaf):
        groups = range(leaf.shape[0])[index[0]]
        rows = [_rule_output(reader, source, prefix, j * g + source.block, leaf.shape[1:])
                [index[1:]] for j in groups]
        return np.stack(rows).astype(np.float32)
    _set(params, path, jax.make_array_from_callback(leaf.shape, leaf.sharding, callback))
  unused = sorted(n for n in reader.names()
                  if n not in used and not weights.is_ignored(n)
                  and not (config.tie_embeddings and n == "lm_head.weight"))
  if unused:
    raise ValueError(f"the checkpoint in {reader.directory} has tensor(s) no parameter of the "
                     f"{model_type} converter takes: {unused[:5]}{' ...' if len(unused) > 5 else ''}"
                     "; the model has parts this code does not implement")
  return params


def _leaf(params: dict, path: tuple):
  node = params
  for key in path:
    if key not in node:
      raise ValueError(f"parameter {'/'.join(path)} is missing from the run's checkpoint")
    node = node[key]
  return node


def _has(params: dict, path: tuple) -> bool:
  node = params
  for key in path:
    if not isinstance(node, dict) or key not in node:
      return False
    node = node[key]
  return True


def export_tensors(params, config: ModelConfig, model_type: str) -> Iterator[tuple]:
  """(HF tensor name, float32 numpy array) pairs, one at a time, in a stable order.

  `params` is a float tree (LoRA merged, quantization undone) in the scanned layout.
  """
  configs.check_exportable(config, model_type)
  prefix = {"gpt2": "transformer.", **{t: "model." for t in configs.LLAMA_FAMILY}}[model_type]
  params = nn.meta.unbox(params)
  g = group_size(config)

  def fetch(path: tuple, group=None):
    if path[-1] == "bias" and path[-2] != "attn_norm" and not _has(params, path):
      # A bias-free projection exported to an architecture with biases: exact zeros.
      kernel = fetch(path[:-1] + ("kernel",), group)
      return np.zeros(kernel.shape[2 if path[-2] == "out" else 1:], np.float32)
    leaf = _leaf(params, path)
    value = leaf if group is None else leaf[group]
    return np.asarray(jax.device_get(value), dtype=np.float32)

  for rule in weights.global_rules(config, model_type):
    arrays = rule.to_hf([fetch(tuple(p.split("/"))) for p in rule.ours])
    yield from zip(weights.hf_names(rule, prefix), arrays)
  for layer in range(config.n_layers):
    group, block = divmod(layer, g)
    for rule in weights.layer_rules(config, model_type):
      ours = [fetch(("layers", f"block_{block}") + tuple(p.split("/")), group)
              for p in rule.ours]
      yield from zip(weights.hf_names(rule, prefix, layer), rule.to_hf(ours))
