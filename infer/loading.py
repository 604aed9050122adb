"""The one loader every entry point uses: run dir -> model config, tokenizer, parameters.

It reads config.json's model, peft and quant sections, the tokenizer, the chat template
when the run has one, and the `params` item of a checkpoint: never the optimizer state.
A quantized run (infer/quantize.py, QLoRA) restores its int8 / packed int4 leaves as such.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from model import sharding, store
from model.chat import ChatTemplate
from model.config import ModelConfig
from model.mesh import MeshConfig
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.tokenizer import Tokenizer, load_tokenizer
from model.encoder_decoder import init_params, make_model


@dataclasses.dataclass
class LoadedModel:
  model_config: ModelConfig
  peft: PeftConfig
  tokenizer: Tokenizer
  params: Any
  mesh: jax.sharding.Mesh
  workdir: str
  step: int
  bytes_read: int = 0
  chat_template: ChatTemplate | None = None
  quant: QuantConfig = QuantConfig()


def abstract_params(model_config: ModelConfig, peft: PeftConfig, mesh,
                    quant: QuantConfig = QuantConfig()):
  """Shapes, dtypes and shardings of the model's parameters on `mesh` (nothing allocated)."""
  model = make_model(model_config, peft, quant)  # by model.arch
  with sharding.use_mesh(mesh):
    boxed = jax.eval_shape(lambda rng: init_params(model, rng, jnp.zeros((1, 8), jnp.int32)),
                           jax.random.key(0))
  shardings = sharding.tree_shardings(boxed, mesh)
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def load_model(path: str, step: int | None = None, mesh_config: MeshConfig | None = None,
               dtype: str | None = None) -> LoadedModel:
  """Loads params (latest or `step`) from a run dir / checkpoints dir / DIR/checkpoints/N.

  The checkpoint may come from any mesh: params are restored onto `mesh_config`
  (default: all devices on the data axis, i.e. replicated parameters), and `dtype`
  overrides the compute dtype (e.g. "bfloat16" for decoding on a GPU).
  """
  workdir, path_step = store.resolve_checkpoint_path(path)
  step = path_step if step is None else step
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"run directory {workdir!r} does not exist; pass the --workdir "
                            "of a training run")
  run = store.read_run_config(workdir)
  if run.head == "reward":
    raise ValueError(
        f"{workdir} is a reward model (config.json head='reward'): it scores replies, it has "
        "no next-token head to generate or evaluate with. Use it as a scorer: python -m "
        f"infer.generate --workdir=POLICY_RUN --sampler=best_of_n --n=8 --scorer={workdir} "
        f"--prompt=..., or as a judge: python -m infer.judge --judge={workdir} ...")
  if run.model_config().arch == "encoder":
    raise ValueError(
        f"{workdir} is an encoder-only model (model.arch=encoder): it attends both ways and "
        "has no next-token head, so it cannot generate or score text left to right. Use it "
        f"for embeddings and search (python -m infer.embed --workdir={workdir} --input=...), "
        "or train a decoder / encoder_decoder run to generate")
  model_config = run.model_config()
  if dtype:
    model_config = dataclasses.replace(model_config, dtype=dtype)
  peft = run.peft_config()
  quant = run.quant_config()
  mesh = sharding.make_mesh((mesh_config or MeshConfig()).as_dict())
  tokenizer = load_tokenizer(os.path.join(workdir, store.TOKENIZER_DIR))
  template_dict = store.read_chat_template_dict(workdir)
  template = ChatTemplate.from_dict(template_dict) if template_dict else None
  params, step, n_bytes = store.restore_params(
      workdir, abstract_params(model_config, peft, mesh, quant), step, version=run.version)
  logging.info("loaded %s step %d onto mesh %s: %.2f MB of parameters read (no optimizer "
               "state)", workdir, step, dict(mesh.shape), n_bytes / 1e6)
  return LoadedModel(model_config=model_config, peft=peft, tokenizer=tokenizer, params=params,
                     mesh=mesh, workdir=workdir, step=step, bytes_read=n_bytes,
                     chat_template=template, quant=quant)
