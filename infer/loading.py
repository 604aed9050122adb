"""The one checkpoint loader every entry point uses: run dir -> config, tokenizer, params."""

import dataclasses
import os
from typing import Any

import jax
from absl import logging

from model import sharding
from train import checkpoint
from train.config import Config, MeshConfig
from train.step import Trainer
from train.tokenizer import Tokenizer, load_tokenizer


@dataclasses.dataclass
class LoadedModel:
  config: Config
  tokenizer: Tokenizer
  params: Any
  mesh: jax.sharding.Mesh
  workdir: str
  step: int


def load_model(path: str, step: int | None = None, mesh_config: MeshConfig | None = None,
               dtype: str | None = None) -> LoadedModel:
  """Loads params (latest or `step`) from a run dir / checkpoints dir / DIR/checkpoints/N.

  The checkpoint may come from any mesh: params are restored onto `mesh_config`
  (default: all devices on the data axis, i.e. replicated parameters), and `dtype`
  overrides the compute dtype (e.g. "bfloat16" for decoding on a GPU).
  """
  workdir, path_step = checkpoint.resolve_checkpoint_path(path)
  step = path_step if step is None else step
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"run directory {workdir!r} does not exist; pass the --workdir "
                            "of a training run")
  config = checkpoint.load_config(workdir)
  if dtype:
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))
  mesh_config = mesh_config or MeshConfig(data=-1, fsdp=1, tensor=1, expert=1)
  config = dataclasses.replace(config, mesh=mesh_config)
  mesh = sharding.make_mesh(mesh_config.as_dict())
  tokenizer = load_tokenizer(os.path.join(workdir, checkpoint.TOKENIZER_DIR))
  trainer = Trainer(config, mesh)
  manager = checkpoint.checkpoint_manager(workdir, async_save=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/{checkpoint.CHECKPOINT_DIR}; train "
                            "first or pass a run directory that has one")
  state = checkpoint.restore(manager, trainer.abstract_state, step)
  manager.close()
  logging.info("loaded %s step %d onto mesh %s", workdir, int(state.step), dict(mesh.shape))
  return LoadedModel(config=config, tokenizer=tokenizer, params=state.params, mesh=mesh,
                     workdir=workdir, step=int(state.step))
