"""Compression from the command line: PTQ int8 / int4 then decoding, QAT whose export is
bit-identical, QLoRA on an int4 base, and logit distillation, on tiny configs."""

import json
import os

import pytest

from tests.cli_runner import last_json_line, run_module


_run = run_module
_summary = last_json_line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("compress")
  text = root / "code.txt"
  text.write_text("".join(f"def f{i}(x):\n    return x * {i % 7} + {i % 10}\n"
                          for i in range(1500)))
  _run(["train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={root / 'base'}",
        f"--data={text}", "--config.model.max_len=96", "--config.train.steps=2"])
  return root


@pytest.mark.slow
def test_int8_and_int4_quantize_then_generate(runs):
  out8 = _summary(_run(["infer.quantize", f"--workdir={runs / 'base'}", "--scheme=int8",
                        f"--out={runs / 'q8'}"]))
  out4 = _summary(_run(["infer.quantize", f"--workdir={runs / 'base'}", "--scheme=int4",
                        "--group_size=32", f"--out={runs / 'q4'}"]))
  for summary, ratio in ((out8, 3.5), (out4, 5.0)):
    assert summary["projection_compression"] > ratio
    assert summary["bytes_after"] < summary["bytes_before"]
    assert 0 < summary["logit_max_abs_err"] < 0.5
    assert abs(summary["check_ppl_quant"] / summary["check_ppl_float"] - 1) < 0.05
  assert out8["logit_max_abs_err"] < out4["logit_max_abs_err"]
  config = json.load(open(runs / "q4" / "config.json"))
  assert config["quant"]["scheme"] == "int4" and config["quant"]["group_size"] == 32
  proc = _run(["infer.generate", f"--workdir={runs / 'q4'}", "--prompt=def f(x):",
               "--max_new_tokens=6", "--json"])
  assert json.loads(proc.stdout.strip().splitlines()[-1])["prompt"] == "def f(x):"
  from infer.quantize import quantize_run  # the user error, without another process
  with pytest.raises(ValueError, match="already quantized"):
    quantize_run(str(runs / "q4"), str(runs / "qq"), "int8")
  assert not os.path.exists(runs / "qq")


@pytest.mark.slow
def test_qat_run_exports_bit_identical(runs):
  summary = _summary(_run([
      "train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={runs / 'qat'}",
      f"--init_from={runs / 'base'}", f"--data={runs / 'code.txt'}",
      "--config.model.max_len=96", "--config.train.steps=2", "--config.quant.qat=int4",
      "--config.quant.group_size=32"]))
  assert summary["how"] == "init_from" and summary["step"] == 2
  out = _summary(_run(["infer.quantize", f"--workdir={runs / 'qat'}", f"--out={runs / 'qat4'}"]))
  assert out["scheme"] == "int4" and out["group_size"] == 32  # the QAT run's own scheme
  assert out["logit_max_abs_err"] == 0.0 and out["kl_mean"] == 0.0


@pytest.mark.slow
def test_qlora_trains_lora_on_an_int4_base(runs):
  summary = _summary(_run([
      "train.main", "--config=experiments/sft.py:tiny", f"--workdir={runs / 'qlora'}",
      f"--init_from={runs / 'base'}", "--config.peft.method=lora",
      "--config.peft.base_quant=int4", "--config.quant.group_size=32",
      "--config.train.steps=2", "--config.train.task_eval_examples=0"]))
  assert summary["peft"] == "lora" and summary["trainable_params"] < summary["total_params"]
  proc = _run(["infer.generate", f"--workdir={runs / 'qlora'}", "--prompt=hi",
               "--max_new_tokens=4"])
  assert "length" in proc.stdout or "eos" in proc.stdout
  config = json.load(open(runs / "qlora" / "config.json"))
  assert config["peft"]["base_quant"] == "int4"
  # Merging dequantizes the int4 base: a plain float model comes out.
  _run(["infer.export", f"--workdir={runs / 'qlora'}", "--merge_lora",
        f"--out={runs / 'qlora_merged'}"])
  merged = json.load(open(runs / "qlora_merged" / "config.json"))
  assert merged["peft"]["method"] == "full" and merged["peft"]["base_quant"] == "none"


@pytest.mark.slow
def test_logit_distillation_from_a_teacher_run(runs):
  summary = _summary(_run([
      "train.main", "--config=experiments/distill.py:tiny", f"--workdir={runs / 'kd'}",
      f"--data={runs / 'code.txt'}", f"--config.distill.teacher={runs / 'base'}",
      "--config.distill.method=logits", "--config.distill.divergence=jsd"]))
  assert summary["step"] == 2 and summary["val_loss"] > 0
  records = [json.loads(l) for l in open(runs / "kd" / "metrics.jsonl")]
  assert any("kd_loss" in r for r in records)
