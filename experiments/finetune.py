r"""Fine-tuning methods compared on the embedded instruction tasks, same base, same steps.

  python -m experiments.finetune --preset=cpu --workdir=runs/finetune

1. pretrains the quickstart model into WORKDIR/base (or takes --base=RUN_DIR; a finished
   run is reused), and measures its held-out exact match per task (zero-shot, through the
   same chat template);
2. fine-tunes it with each method for the same number of steps: full SFT, LoRA at two
   ranks, bottleneck adapters, prompt tuning (each at its customary learning rate);
3. writes WORKDIR/finetune.md, finetune.json and finetune.png: trainable % of parameters,
   optimizer-state bytes, training tokens/s, held-out loss and exact match per task before
   and after. Rerunning resumes: finished runs are read back, not retrained.
"""

import json
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "smoke"], "cpu: minutes on 2 cores; smoke: tests.")
flags.DEFINE_string("workdir", None, "Experiment directory (resumed if it exists).")
flags.DEFINE_string("base", "", "A pretrained run directory to start from (default: train "
                    "the quickstart model into WORKDIR/base).")
flags.DEFINE_integer("steps", 0, "Fine-tuning steps per method (0 = the preset's).")

# (name, overrides): each method at the learning rate it is usually run with.
METHODS = (
    ("full", {"peft.method": "full", "train.learning_rate": "1e-3"}),
    ("lora_r4", {"peft.method": "lora", "peft.rank": "4", "peft.alpha": "8",
                 "train.learning_rate": "3e-3"}),
    ("lora_r16", {"peft.method": "lora", "peft.rank": "16", "peft.alpha": "32",
                  "train.learning_rate": "3e-3"}),
    ("adapters", {"peft.method": "adapters", "peft.adapter_dim": "16",
                  "train.learning_rate": "3e-3"}),
    ("prompt_tuning", {"peft.method": "prompt_tuning", "peft.prompt_length": "16",
                       "train.learning_rate": "3e-2"}),
)
PRESETS = {
    "cpu": {"base_config": "experiments/quickstart.py", "sft_config": "experiments/sft.py",
            "sft_overrides": [("train.task_eval_examples", "40"), ("train.eval_every", "200")],
            "steps": 800},
    "smoke": {"base_config": "experiments/quickstart.py:tiny",
              "base_overrides": [("model.max_len", "96")],
              "sft_config": "experiments/sft.py:tiny", "steps": 4},
}


def _base_run(preset: dict, workdir: str) -> str:
  from train.config import build_config  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  if FLAGS.base:
    return FLAGS.base
  base_dir = os.path.join(workdir, "base")
  train(build_config(preset["base_config"], preset.get("base_overrides", [])), base_dir)
  return base_dir


def _zero_shot(sft_config, base_dir: str) -> dict:
  """The base's exact match and held-out SFT loss before any fine-tuning."""
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from train import task_eval  # pylint: disable=g-import-not-at-top
  from train.run_data import build_run_data  # pylint: disable=g-import-not-at-top
  loaded = load_model(base_dir)
  data = build_run_data(sft_config.data, loaded.tokenizer, seed=sft_config.train.seed)
  rows = task_eval.select_rows(data.heldout, sft_config.train.task_eval_examples)
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  return task_eval.evaluate_tasks(decoder, loaded.params, loaded.tokenizer, data.template,
                                  rows, sft_config.train.task_eval_tokens)


def run_experiment(preset_name: str, workdir: str, steps: int = 0) -> dict:
  from train.config import build_config  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  preset = PRESETS[preset_name]
  steps = steps or preset["steps"]
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  base_dir = _base_run(preset, workdir)
  sft_overrides = preset.get("sft_overrides", [])
  base_config = build_config(preset["sft_config"],
                             [("train.init_from", base_dir)] + sft_overrides)
  before = _zero_shot(base_config, base_dir)
  logging.info("base %s zero-shot exact match %.3f", base_dir, before["exact_match"])
  rows = []
  for name, overrides in METHODS:
    pairs = [("train.init_from", base_dir), ("train.steps", str(steps))] + sft_overrides
    pairs += list(overrides.items())
    config = build_config(preset["sft_config"], pairs)
    run_start = time.perf_counter()
    summary = train(config, os.path.join(workdir, name))
    rows.append(dict(
        method=name, overrides=overrides, steps=summary["step"],
        trainable_params=summary["trainable_params"], total_params=summary["total_params"],
        trainable_percent=100.0 * summary["trainable_params"] / summary["total_params"],
        optimizer_state_bytes=summary["optimizer_state_bytes"],
        tokens_per_s=summary.get("tokens_per_s", 0.0), val_loss=summary.get("val_loss"),
        exact_match=summary.get("exact_match"),
        per_task={k.split("/", 1)[1]: v for k, v in summary.items()
                  if k.startswith("exact_match/")},
        wall_s=time.perf_counter() - run_start))
  result = {"preset": preset_name, "base": base_dir, "steps": steps,
            "before": {"exact_match": before["exact_match"],
                       "per_task": {k.split("/", 1)[1]: v for k, v in before.items()
                                    if k.startswith("exact_match/")}},
            "methods": rows, "wall_s": time.perf_counter() - start}
  from experiments import finetune_report  # pylint: disable=g-import-not-at-top
  finetune_report.write(result, workdir)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from infer import cli  # pylint: disable=g-import-not-at-top
  result = cli.run_cli("finetune", lambda: run_experiment(FLAGS.preset, FLAGS.workdir,
                                                          FLAGS.steps))
  print(json.dumps({"wall_s": result["wall_s"], "before": result["before"]["exact_match"],
                    "after": {r["method"]: r["exact_match"] for r in result["methods"]}}))


if __name__ == "__main__":
  app.run(main)
