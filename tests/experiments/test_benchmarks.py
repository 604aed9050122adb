"""The training and decode benchmarks run end to end on the tiny preset and report sane ratios."""

import json

import numpy as np
import pytest

from experiments import bench_decode, bench_train
from model import flops
from model.config import preset


def _last_json_line(capsys) -> dict:
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_train_reports_throughput_and_mfu(capsys):
  returned = bench_train.main(["bench_train", "--preset=tiny", "--batch_size=4", "--seq_len=32",
                               "--steps=2", "--warmup=1", "--mesh=data=1", "--matmul_size=256"])
  summary = _last_json_line(capsys)
  assert summary == json.loads(json.dumps(returned))
  assert summary["benchmark"] == "train" and summary["matmul_tflops_per_device"] > 0
  (result,) = summary["results"]
  assert result["preset"] == "tiny" and result["devices"] == 1
  assert result["tokens_per_s"] > 0
  np.testing.assert_allclose(result["step_seconds"] * result["tokens_per_s"], 4 * 32)
  for method in flops.METHODS:
    assert result["flops_per_token"][method] == flops.flops_per_token(preset("tiny"), 32, method)
    assert 0 < result["mfu_vs_matmul"][method] <= 1.5
  np.testing.assert_allclose(
      result["mfu_vs_matmul"]["exact"],
      result["achieved_tflops"]["exact"] / summary["matmul_tflops_per_device"])
  assert result["mfu_vs_datasheet"] is None  # no datasheet peak for CPUs
  assert np.isfinite(result["loss"])


def test_bench_decode_reports_throughput_and_roofline(capsys):
  returned = bench_decode.main(["bench_decode", "--preset=tiny", "--batch_sizes=1,2",
                                "--prompt_len=8", "--gen_tokens=4", "--warmup=1",
                                "--copy_mbytes=64"])
  summary = _last_json_line(capsys)
  assert summary == json.loads(json.dumps(returned))
  assert summary["benchmark"] == "decode" and summary["copy_bandwidth_gb_per_s"] > 0
  config = preset("tiny")
  param_bytes = 4 * (flops.param_counts(config)["total"] - (config.vocab_size - 1) * config.d_model)
  for batch, result in zip((1, 2), summary["results"]):
    assert result["batch_size"] == batch and result["tokens_per_s"] > 0
    assert 0 < result["roofline_fraction"] <= 1.5
    # Untied input table: only B rows read. Cache: 16-token prompt bucket + 5 -> capacity 32.
    assert result["param_bytes_read"] == param_bytes + 4 * (batch - 1) * config.d_model
    assert result["cache_capacity"] == 32
    kv_bytes = 2 * config.n_layers * batch * 32 * config.heads_kv * config.head_dim * 4
    assert result["kv_cache_bytes_read"] == kv_bytes
    np.testing.assert_allclose(
        result["roofline_tokens_per_s"],
        batch * summary["copy_bandwidth_gb_per_s"] * 1e9 / (param_bytes + kv_bytes
                                                           + 4 * (batch - 1) * config.d_model))


@pytest.mark.parametrize("argv, message", [
    (["--mesh=data=2,pipeline=2"], "bad --mesh entry"),
    (["--preset=tiny", "--compare_dispatch", "--mesh=data=1"], "needs MoE presets"),
])
def test_bench_train_errors_name_the_fix(argv, message):
  with pytest.raises(ValueError, match=message):
    bench_train.main(["bench_train", "--matmul_size=64", "--steps=1", *argv])


@pytest.mark.slow
def test_bench_train_compares_moe_dispatch(capsys):
  bench_train.main(["bench_train", "--preset=moe_tiny", "--compare_dispatch",
                    "--capacity_factor=1.0", "--batch_size=4", "--seq_len=32", "--steps=2",
                    "--warmup=1", "--mesh=data=1", "--matmul_size=256"])
  dropless, capacity = _last_json_line(capsys)["results"]
  assert dropless["dispatch"].startswith("dropless") and dropless["moe_drop_fraction"] == 0
  assert capacity["dispatch"] == "capacity" and capacity["capacity_factor"] == 1.0
  assert 0 <= capacity["moe_drop_fraction"] < 1
  np.testing.assert_allclose(capacity["speedup_vs_dropless"],
                             capacity["tokens_per_s"] / dropless["tokens_per_s"])
  config = preset("moe_tiny")
  for result in (dropless, capacity):
    assert result["flops_basis"] == "active parameters"
    assert result["params_active"] == flops.param_counts(config)["active"] < result["params"]
    assert result["flops_per_token"]["6n"] == 6 * flops.param_counts(config)["active_non_embedding"]
    assert 0 < result["mfu_vs_matmul"]["exact"] <= 1.5


def test_bench_tokenize_reports_scaling_and_memory(tmp_path):
  """Tiny sizes, from the CLI: the stages run in their own processes and the summary's ratios
  are the documented quotients of its own figures."""
  import subprocess
  import sys
  out = subprocess.run([sys.executable, "-m", "experiments.bench_tokenize",
                        f"--out_dir={tmp_path}", "--corpus_mb=3", "--small_mb=1",
                        "--baseline_mb=1", "--workers=2", "--vocab_size=512"],
                       capture_output=True, text=True, check=True, timeout=600)
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  full, small, base = summary["full"], summary["small"], summary["baseline"]
  assert full["bytes"] > 2.9e6 and full["tokens"] > 2 * small["tokens"] > 0
  assert base["tokens_per_s"] > 0 and full["shards"] >= 2  # a train and a val shard at least
  np.testing.assert_allclose(summary["scaling"],
                             full["tokens_per_s"] / (2 * base["tokens_per_s"]))
  assert 0.5 < summary["memory_ratio"] < 2.0
  assert "| full |" in out.stdout
