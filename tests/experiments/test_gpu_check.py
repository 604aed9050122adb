"""gpu_check --dry runs every row of the GPU table on a CPU, through the same code paths."""

import json

import jax
import pytest

from experiments import gpu_check


@pytest.mark.slow
def test_dry_run_prints_every_row(capsys):
  summary = gpu_check.main(["gpu_check", "--dry", "--steps=1"])
  out = capsys.readouterr().out.strip().splitlines()
  assert json.loads(out[-1]) == json.loads(json.dumps(summary))
  rows = {r["row"]: r for r in summary["rows"]}
  assert len(rows) == 7
  assert any(name.startswith("train tiny") and "remat dots" in name for name in rows)
  assert sum("moe_tiny" in name for name in rows) == 2
  assert any("dropless" in name for name in rows)
  assert {"decode tiny batch 1", "decode tiny batch 2"} <= set(rows)
  for row in summary["rows"][:-1]:
    assert row["figure"] > 0 and row["ratio"] > 0
  assert 0 < summary["attention"]["xla_max_abs_error"] < 0.1  # bf16 inputs vs float32
  table = "\n".join(out[:-1])
  assert "| check |" in table and "attention cuDNN vs XLA" in table


def test_full_mode_refuses_without_gpu():
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU is present")
  with pytest.raises(ValueError, match="--dry"):
    gpu_check.main(["gpu_check"])


def test_attention_numerics_are_small():
  errors = gpu_check.attention_numerics(1, 16, 2, 8, use_cudnn=False)
  assert 0 < errors["xla_max_abs_error"] < 0.05
