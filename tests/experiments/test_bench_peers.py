"""bench_peers --quick: the project, plain Flax and PyTorch steps build the same model
(equal parameter counts, first losses near ln(vocab)) and report ratios."""

import json

import pytest

from experiments import bench_peers
from model import flops


@pytest.mark.slow
def test_quick_run_reports_all_three_and_ratios(capsys):
  summary = bench_peers.main(["bench_peers", "--quick"])
  out = capsys.readouterr().out.strip().splitlines()
  assert json.loads(out[-1]) == json.loads(json.dumps(summary))
  assert [r["shape"] for r in summary["results"]] == list(bench_peers.QUICK_SHAPES)
  for result in summary["results"]:
    impls = set(result["tokens_per_s"])
    assert {"project", "plain"} <= impls
    assert all(v > 0 for v in result["tokens_per_s"].values())
    assert result["project_over_plain"] > 0
    if "torch" in impls:
      assert result["project_over_torch"] > 0
    for impl, loss in result["first_loss"].items():  # same init scale: loss ~ ln(vocab)
      assert abs(loss - result["ln_vocab"]) < 0.3, (impl, loss)
  assert "project/PyTorch" in "\n".join(out)


def test_the_models_are_the_same_size():
  import numpy as np
  model = bench_peers.SHAPES["small_tiny"]
  tokens = np.zeros((2, 17), np.int32)
  _, plain = bench_peers.plain_step(model, tokens)
  built = bench_peers.torch_step(model, tokens)
  if built is not None:
    assert built[1] == plain
  assert plain == flops.param_counts(model)["total"]  # the project's model


def test_unknown_shape_is_refused():
  with pytest.raises(ValueError, match="unknown shape"):
    bench_peers.main(["bench_peers", "--shapes=gpt9"])
