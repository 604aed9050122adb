"""End to end from the command line: train an encoder-decoder on the embedded seq2seq set,
decode it with every sampler, and run the architecture comparison's smoke preset."""

import json
import os

import pytest

from tests.cli_runner import last_json_line, run_module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("t5") / "run")
  summary = last_json_line(run_module(
      ["train.main", "--config=experiments/seq2seq.py:tiny", f"--workdir={workdir}"]))
  assert summary["step"] == 4 and summary["val_loss"] > 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["arch"] == "encoder_decoder"
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--sampler=greedy"],
    ["--sampler=top_p", "--temperature=0.8", "--top_k=20", "--top_p=0.9", "--seed=3"],
    ["--sampler=beam", "--num_beams=4"],
    ["--sampler=best_of_n", "--n=3"],
])
def test_generate_with_every_sampler(run_dir, flags):
  proc = run_module(["infer.generate", f"--workdir={run_dir}", "--json", "--max_new_tokens=8",
                     "--prompt=en->digits: forty-two", *flags])
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert len(records) == 1
  record = records[0]
  assert record["prompt"] == "en->digits: forty-two"
  assert 1 <= record["n_tokens"] <= 8 and isinstance(record["completion"], str)
  if "beam" in flags[0] or "best_of_n" in flags[0]:
    assert "score" in record


@pytest.mark.slow
def test_architectures_smoke(tmp_path):
  workdir = str(tmp_path / "arch")
  out = last_json_line(run_module(["experiments.architectures", "--preset=smoke",
                                   f"--workdir={workdir}"]))
  assert set(out) >= {"decoder", "encoder_decoder"}
  for name in ("architectures.md", "architectures.json", "architectures.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, "architectures.json")) as f:
    result = json.load(f)
  rows = {r["arch"]: r for r in result["architectures"]}
  # Matched compute: the decoder's steps were chosen to spend the encoder-decoder's FLOPs.
  ratio = rows["decoder"]["train_flops"] / rows["encoder_decoder"]["train_flops"]
  assert 0.5 < ratio < 1.6, ratio
  assert rows["encoder_decoder"]["params"] > 0 and 0 <= rows["decoder"]["beam"]["bleu"] <= 100


@pytest.mark.slow
def test_single_stack_tools_refuse_an_encoder_decoder_run_clearly(run_dir, tmp_path):
  """Quantization drives one stack: on a seq2seq run it names the limit instead of a Flax error."""
  proc = run_module(["infer.quantize", f"--workdir={run_dir}", f"--out={tmp_path / 'q'}",
                     "--scheme=int8"], check=False)
  assert proc.returncode != 0
  assert "infer.quantize does not support model.arch='encoder_decoder'" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "q")
