"""Fine-tuning from the command line: each PEFT method, user jsonl, decode, merge-export,
the comparison experiment, and the user errors."""

import json
import os

import pytest

from tests.cli_runner import last_json_line, run_module


_run = run_module
_summary = last_json_line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ft")
  text = root / "code.txt"
  text.write_text("".join(f"def f{i}(x):\n    return x + {i % 10}\n" for i in range(2000)))
  _run(["train.main", "--config=experiments/quickstart.py:tiny", f"--workdir={root / 'base'}",
        f"--data={text}", "--config.model.max_len=96", "--config.train.steps=4"])
  return root


def _sft(runs, name, *extra):
  return _run(["train.main", "--config=experiments/sft.py:tiny", f"--workdir={runs / name}",
               f"--init_from={runs / 'base'}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("full", []),
    ("lora", ["--config.peft.rank=8"]),
    ("adapters", []),
    ("prompt_tuning", []),
])
def test_each_method_trains_from_a_base_run(runs, method, extra):
  proc = _sft(runs, f"sft_{method}", f"--config.peft.method={method}", *extra)
  summary = _summary(proc)
  assert summary["how"] == "init_from" and summary["peft"] == method and summary["step"] == 4
  assert 0 <= summary["exact_match"] <= 1 and summary["val_loss"] > 0
  if method != "full":
    assert summary["trainable_params"] < 0.2 * summary["total_params"]
  assert "trainable of" in proc.stderr and "optimizer state" in proc.stderr
  records = [json.loads(l) for l in open(runs / f"sft_{method}" / "metrics.jsonl")]
  assert any("exact_match" in r for r in records if not r.get("final"))  # every eval_every
  assert os.path.exists(runs / f"sft_{method}" / "chat_template.json")


@pytest.mark.slow
def test_lora_decodes_unmerged_and_merged_to_the_same_text(runs):
  if not (runs / "sft_lora").exists():
    _sft(runs, "sft_lora", "--config.peft.method=lora", "--config.peft.rank=8")
  gen = ["--prompt=What is 2 + 3?", "--max_new_tokens=8", "--json"]
  unmerged = json.loads(_run(["infer.generate", f"--workdir={runs / 'sft_lora'}", *gen])
                        .stdout.strip().splitlines()[-1])
  proc = _run(["infer.export", f"--workdir={runs / 'sft_lora'}", "--merge_lora",
               f"--out={runs / 'merged'}"])
  assert "merged" in proc.stdout
  config = json.load(open(runs / "merged" / "config.json"))
  assert config["peft"]["method"] == "full" and config["format_version"] == 2
  merged = json.loads(_run(["infer.generate", f"--workdir={runs / 'merged'}", *gen])
                      .stdout.strip().splitlines()[-1])
  assert merged["completion"] == unmerged["completion"]
  again = _run(["infer.export", f"--workdir={runs / 'sft_lora'}", "--merge_lora",
                f"--out={runs / 'merged'}"], check=False)
  assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.slow
def test_user_jsonl_and_its_errors(runs):
  good = runs / "mine.jsonl"
  rows = [{"prompt": f"Double {i}.", "response": str(2 * i)} for i in range(60)]
  rows += [{"messages": [{"role": "user", "content": f"Echo {w}"},
                         {"role": "assistant", "content": w}]} for w in ("ab", "cd", "ef")]
  good.write_text("".join(json.dumps(r) + "\n" for r in rows))
  summary = _summary(_sft(runs, "sft_mine", f"--data={good}"))
  assert summary["step"] == 4 and "exact_match" in summary
  bad = runs / "bad.jsonl"
  bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n{\"prompt\": 3}\n")
  proc = _run(["train.main", "--config=experiments/sft.py:tiny", f"--workdir={runs / 'sft_bad'}",
               f"--init_from={runs / 'base'}", f"--data={bad}"], check=False)
  assert proc.returncode == 1
  assert "line 3" in proc.stderr and "bad.jsonl" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_finetune_experiment_smoke(tmp_path):
  proc = _run(["experiments.finetune", "--preset=smoke", f"--workdir={tmp_path}"],
              timeout=900)
  result = json.load(open(tmp_path / "finetune.json"))
  assert [r["method"] for r in result["methods"]] == [
      "full", "lora_r4", "lora_r16", "adapters", "prompt_tuning"]
  for row in result["methods"]:
    assert row["steps"] == 4 and 0 <= row["exact_match"] <= 1
  percents = {r["method"]: r["trainable_percent"] for r in result["methods"]}
  assert percents["full"] == pytest.approx(100.0)
  assert percents["prompt_tuning"] < percents["lora_r4"] < percents["lora_r16"] < 100.0
  assert (tmp_path / "finetune.md").exists() and (tmp_path / "finetune.png").exists()
  assert "exact match" in proc.stdout
