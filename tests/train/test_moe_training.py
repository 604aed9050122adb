"""A tiny MoE model with expert parallelism trains, its loss falls, it resumes and decodes."""

import dataclasses
import json

import numpy as np
import pytest

from infer import sampling
from infer.decode import Decoder
from infer.loading import load_model
from model.config import preset
from train import checkpoint
from train.config import MeshConfig, build_config
from train.loop import train


@pytest.mark.slow
def test_moe_trains_with_expert_parallelism_resumes_and_decodes(tmp_path):
  text = tmp_path / "corpus.txt"
  text.write_text("".join(f"def f{i % 50}(x):\n    return x + {i % 7}\n" for i in range(4000)))
  config = build_config("experiments/quickstart.py:tiny", [("data.data", str(text))])
  config = dataclasses.replace(
      config,
      model=preset("moe_tiny", vocab_size=264, d_model=32, n_heads=2, max_len=64,
                   n_experts=4, d_ff_expert=64, capacity_factor=1.5),
      mesh=MeshConfig(data=-1, expert=2),
      train=dataclasses.replace(config.train, steps=16, log_every=2, eval_every=0,
                                learning_rate=1e-2, checkpoint_every=100))
  workdir = str(tmp_path / "moe")
  first = train(config, workdir, stop_at_step=8)
  assert first["stopped_early"]
  summary = train(config, workdir)
  assert summary["start_step"] == 8 and summary["step"] == 16
  records = [json.loads(l) for l in open(f"{workdir}/{checkpoint.METRICS_FILE}")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert losses[-1] < losses[0] - 0.5, losses
  moe_records = [r for r in records if "moe_load_balance_loss" in r]
  assert moe_records and all(r["moe_load_balance_loss"] >= 0.99 for r in moe_records)
  assert all(0.0 <= r["moe_drop_fraction"] <= 1.0 for r in moe_records)

  loaded = load_model(workdir, mesh_config=MeshConfig(data=-1, expert=2))
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft)
  prompt = loaded.tokenizer.encode("def f1(x):")
  out = decoder.generate(loaded.params, [prompt], 6, sampling.make_sampling_params(1, "greedy"))
  assert len(out.tokens[0]) == 6
  assert np.all(np.asarray(out.logprobs[0]) <= 0)
