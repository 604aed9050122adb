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


@pytest.mark.slow
def test_data_distillation_writes_the_teacher_set_and_resumes_from_it(runs):
  args = ["train.main", "--config=experiments/distill.py:tiny", f"--workdir={runs / 'dd'}",
          f"--data={runs / 'code.txt'}", f"--config.distill.teacher={runs / 'base'}",
          "--config.distill.method=data", "--config.distill.synthetic_prompts=16",
          "--config.distill.synthetic_tokens=24", "--config.distill.mix=0.5"]
  summary = _summary(_run(args))
  assert summary["step"] == 2 and summary["val_loss"] > 0
  rows = [json.loads(l) for l in open(runs / "dd" / "synthetic.jsonl")]
  assert len(rows) == 16 and all(len(r["tokens"]) > 16 for r in rows)  # prompt + teacher text
  data = json.load(open(runs / "dd" / "data.json"))
  assert data["synthetic"]["samples"] == 16 and data["synthetic"]["mix"] == 0.5
  proc = _run(args + ["--config.train.steps=3"])
  assert _summary(proc)["how"] == "resumed" and "samples read from" in proc.stderr
  # A refused run (the workdir holds another run) writes no teacher set there.
  proc = _run(["train.main", "--config=experiments/distill.py:tiny",
               f"--workdir={runs / 'base'}", f"--data={runs / 'code.txt'}",
               f"--config.distill.teacher={runs / 'base'}", "--config.distill.method=data",
               "--config.distill.synthetic_prompts=2"], check=False)
  assert proc.returncode != 0 and "start a new --workdir" in proc.stderr
  assert not os.path.exists(runs / "base" / "synthetic.jsonl")


@pytest.mark.slow
def test_on_policy_distillation_trains_on_student_samples(runs):
  summary = _summary(_run([
      "train.main", "--config=experiments/distill.py:tiny", f"--workdir={runs / 'opd'}",
      f"--config.distill.teacher={runs / 'base'}", "--config.distill.method=on_policy",
      "--config.data.seq_len=64", "--config.rl.max_new_tokens=6",
      "--config.distill.divergence=reverse_kl"]))
  assert summary["step"] == 2
  config = json.load(open(runs / "opd" / "config.json"))
  assert config["data"]["kind"] == "rollout" and config["distill"]["method"] == "on_policy"
  records = [json.loads(l) for l in open(runs / "opd" / "metrics.jsonl")]
  kd = [r for r in records if "kd_loss" in r]
  assert kd and all(r["kd_loss"] == pytest.approx(r["loss"], rel=1e-5) for r in kd)
  proc = _run(["infer.generate", f"--workdir={runs / 'opd'}", "--prompt=What is 2 + 3?",
               "--max_new_tokens=4", "--json"])
  assert json.loads(proc.stdout.strip().splitlines()[-1])["prompt"] == "What is 2 + 3?"


@pytest.mark.slow
def test_quantized_embeddings_from_the_cli(runs):
  out = _summary(_run(["infer.quantize", f"--workdir={runs / 'base'}", "--scheme=int8",
                       "--include_embed", "--include_head", f"--out={runs / 'q8e'}"]))
  assert out["include_embed"] and out["compression"] > 3.0  # embedding included: ~4x
  assert 0 < out["logit_max_abs_err"] < 0.5
  assert abs(out["check_ppl_quant"] / out["check_ppl_float"] - 1) < 0.05
  config = json.load(open(runs / "q8e" / "config.json"))
  assert config["quant"]["include_embed"] is True
  proc = _run(["infer.generate", f"--workdir={runs / 'q8e'}", "--prompt=def f(x):",
               "--max_new_tokens=6", "--json"])
  assert json.loads(proc.stdout.strip().splitlines()[-1])["prompt"] == "def f(x):"


@pytest.mark.slow
def test_distillation_table_smoke(runs):
  """experiments.compress's distillation table: four students, the teacher's cost of each."""
  _run(["experiments.compress", "--preset=smoke", f"--workdir={runs / 'table'}",
        "--part=distill"])
  result = json.load(open(runs / "table" / "compress.json"))
  rows = {r["name"]: r for r in result["distill_rows"]}
  assert set(rows) == {"teacher", "labels only", "logit KD (forward KL, T=2)",
                       "data distillation", "on-policy distillation"}
  assert "rows" not in result  # --part=distill: no quantization table
  students = [r for name, r in rows.items() if name != "teacher"]
  assert len({r["student_flops"] for r in students if "on-policy" not in r["name"]}) == 1
  assert rows["labels only"]["teacher_flops"] == 0
  assert rows["data distillation"]["teacher_flops"] > 0
  assert (rows["logit KD (forward KL, T=2)"]["teacher_flops"]
          == rows["on-policy distillation"]["teacher_flops"] > 0)
  assert all(r["ppl"] > 1 and 0 <= r["exact_match"] <= 1 for r in rows.values())
  assert "| on-policy distillation |" in open(runs / "table" / "compress.md").read()
