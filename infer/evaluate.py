r"""Evaluate a run (or any system's outputs): metrics with bootstrap intervals, per slice.

  python -m infer.evaluate --workdir=runs/sft_full --suite=tasks --out=runs/sft_full/eval
  python -m infer.evaluate --workdir=RUN --data=my_eval.jsonl --metrics=exact,f1,bleu,chrf,rouge \
      --out=OUT
  python -m infer.evaluate --workdir=RUN --perplexity --data=my_texts/ --out=OUT
  python -m infer.evaluate --predictions=outputs.jsonl --metrics=exact,f1,bleu --out=OUT
  python -m infer.evaluate --rerun=OUT/config.json --out=OUT2      # the same scores again
  python -m infer.evaluate --workdir=RUN --suite=robustness --out=OUT  # perturbed prompts
  python -m infer.evaluate --suite=robustness --write_set=robust.jsonl  # just write the set

--suite=robustness (infer/eval/robustness.py) is the held-out split under named, deterministic
perturbations; each row's slice is its perturbation, so per-slice scores show robustness.

Writes OUT/scores.json ({metric: {"value", "low", "high", "n"}}, "slices", ...),
OUT/examples.jsonl (per example or per window) and OUT/config.json (everything needed to rerun).
"""

import json
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
  """Defines this CLI's flags (at run time, so that importing the module for its
  functions never clashes with another CLI's flags of the same name)."""
  flags.DEFINE_string("workdir", None, "Run directory of the model to evaluate.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_enum("suite", None, ["tasks", "robustness"], "An embedded eval suite: the tasks' "
                    "held-out split, as is ('tasks') or under perturbations ('robustness').")
  flags.DEFINE_integer("n_per_task", 50, "Examples per task for --suite.")
  flags.DEFINE_list("tasks", [], "Tasks for --suite (default: all).")
  flags.DEFINE_string("write_set", None, "With --suite=robustness: write its eval set to this "
                      "jsonl and stop (no model needed).")
  flags.DEFINE_string("data", None, "Eval-set jsonl (or, with --perplexity, text file/dir/glob).")
  flags.DEFINE_string("predictions", None, "Score this jsonl of {id, prediction, reference(s)}.")
  flags.DEFINE_string("compare", None, "With --predictions: a second system's jsonl; adds a "
                      "paired bootstrap of the difference (first minus second) on shared ids.")
  flags.DEFINE_bool("perplexity", False, "Perplexity and bits per byte of --data.")
  flags.DEFINE_string("jsonl_field", "text", "Text field of .jsonl files for --perplexity.")
  flags.DEFINE_string("metrics", None, "Comma-separated metrics (default: exact,f1; suite: "
                      "task_score,exact,f1). 'rouge' = rouge1,rouge2,rougeL.")
  flags.DEFINE_list("slice_by", ["slice", "task"], "Row keys (top level or metadata) whose "
                    "values make slices.")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_string("rerun", None, "A config.json written by an earlier evaluation: rerun it.")
  flags.DEFINE_enum("sampler", "greedy", ["greedy", "random", "temperature", "top_k", "top_p"],
                    "Decoding method.")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature.")
  flags.DEFINE_integer("top_k", 0, "Top-k (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Top-p (1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed (also the data seed of --suite).")
  flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per example.")
  flags.DEFINE_multi_string("stop", [], "Stop string(s) (the chat template's turn end is added).")
  flags.DEFINE_integer("batch_size", 8, "Prompts (or perplexity windows) per batch.")
  flags.DEFINE_string("template", "", "Chat template: '' = the run's own (none: raw text; the "
                      "suite then uses 'qa'), 'raw', or a name from model/chat.py.")
  flags.DEFINE_string("pre", "", "Processing steps on inputs, e.g. 'strip@1'.")
  flags.DEFINE_string("post", "strip@1", "Processing steps on predictions, e.g. "
                      "'strip@1,first_line@1,extract_number@1'.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples (0 = no intervals).")
  flags.DEFINE_integer("bootstrap_seed", 0, "Bootstrap seed.")


def config_from_flags() -> dict:
  from infer.eval import data as data_lib
  from infer.eval import metrics as metrics_lib
  from infer.eval import runner, scoring, tasks

  modes = [m for m, on in (("predictions", FLAGS.predictions), ("suite", FLAGS.suite),
                           ("perplexity", FLAGS.perplexity)) if on]
  if len(modes) > 1:
    raise ValueError(f"choose one of --predictions, --suite, --perplexity (got {modes})")
  mode = modes[0] if modes else "data"
  if mode in ("data", "perplexity") and not FLAGS.data:
    raise ValueError(f"--data=PATH is needed{' with --perplexity' if modes else ''} (or give "
                     "--suite=tasks or --predictions=FILE)")
  if mode != "predictions" and not FLAGS.workdir:
    raise ValueError("--workdir=RUN_DIR is needed to evaluate a model (or score outputs with "
                     "--predictions=FILE)")
  default = "task_score,exact,f1" if mode == "suite" else "exact,f1"
  names = metrics_lib.parse_metrics(FLAGS.metrics or default, extra=[scoring.TASK_SCORE])
  config = dict(mode=mode, metrics=names, slice_by=list(FLAGS.slice_by),
                bootstrap=dict(samples=FLAGS.bootstrap_samples, seed=FLAGS.bootstrap_seed))
  if FLAGS.compare and mode != "predictions":
    raise ValueError("--compare needs --predictions (it compares two systems' output files)")
  if mode == "predictions":
    config["data"] = os.path.abspath(FLAGS.predictions)
    if FLAGS.compare:
      config["compare"] = os.path.abspath(FLAGS.compare)
  elif mode == "suite":
    task_names = list(FLAGS.tasks) or list(tasks.TASK_NAMES)
    for task in task_names:
      tasks._check_task(task)
    config["suite"] = dict(name=FLAGS.suite, n_per_task=FLAGS.n_per_task, seed=FLAGS.seed,
                           tasks=task_names, split="heldout")
  else:
    config["data"] = os.path.abspath(FLAGS.data)
  if mode == "perplexity":
    config["jsonl_field"] = FLAGS.jsonl_field
    config["batch_size"] = FLAGS.batch_size
    del config["metrics"]
  elif mode != "predictions":
    config["generation"] = runner.GenerationConfig(
        sampler=FLAGS.sampler, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
        top_p=FLAGS.top_p, seed=FLAGS.seed, max_new_tokens=FLAGS.max_new_tokens,
        stop=tuple(FLAGS.stop), batch_size=FLAGS.batch_size,
        template=FLAGS.template or ("" if mode != "suite" else "auto:qa"),
        pre=tuple(data_lib.parse_steps(FLAGS.pre)),
        post=tuple(data_lib.parse_steps(FLAGS.post))).to_dict()
  if FLAGS.workdir and mode != "predictions":
    config["workdir"] = os.path.abspath(FLAGS.workdir)
    config["step"] = FLAGS.step
  return config


def evaluate(config: dict) -> tuple[dict, list[dict], dict]:
  """(scores, per-example rows, the config completed with resolved step, digests, versions)."""
  from infer.eval import bootstrap
  from infer.eval import data as data_lib
  from infer.eval import runner, scoring

  config = json.loads(json.dumps(config))
  mode, boot = config["mode"], config["bootstrap"]
  if "data" in config and mode != "suite":
    digest = "".join(data_lib.file_digest(p) for p in data_lib.text_files(config["data"]))
    recorded = config.get("data_sha256")
    if recorded and recorded != digest:
      raise ValueError(f"{config['data']} changed since the recorded evaluation (sha256 differs); "
                       "restore it to rerun, or evaluate it afresh without --rerun")
    config["data_sha256"] = digest
  if mode == "predictions":
    rows = data_lib.read_predictions(config["data"], config["slice_by"])
    scores, examples = scoring.score_rows(rows, config["metrics"], boot["samples"], boot["seed"])
    if config.get("compare"):
      digest = data_lib.file_digest(config["compare"])
      if config.get("compare_sha256", digest) != digest:
        raise ValueError(f"{config['compare']} changed since the recorded evaluation")
      config["compare_sha256"] = digest
      other = data_lib.read_predictions(config["compare"], config["slice_by"])
      scores["comparison"] = dict(
          a=config["data"], b=config["compare"],
          **scoring.compare(rows, other, config["metrics"], boot["samples"], boot["seed"]))
    return scores, examples, config

  from infer.loading import load_model
  loaded = load_model(config["workdir"], step=config.get("step"))
  config["step"] = loaded.step
  if mode == "perplexity":
    docs = data_lib.read_documents(config["data"], config["jsonl_field"])
    windows = runner.perplexity(loaded, docs, config["batch_size"])
    values = runner.perplexity_values(windows)
    scores = {name: bootstrap.interval(fn, len(windows), boot["samples"], boot["seed"])
              for name, fn in values.items()}
    scores.update(n_documents=len(docs), n_windows=len(windows),
                  tokens=sum(w["tokens"] for w in windows),
                  bytes=sum(w["bytes"] for w in windows), bootstrap_unit="window",
                  context=loaded.model_config.max_len)
    return scores, windows, config

  gen = dict(config["generation"])
  if gen["template"] == "auto:qa":  # the suite needs a prompt format; pretrained runs have none
    gen["template"] = "" if loaded.chat_template else "qa"
    config["generation"] = gen
  if mode == "suite":
    suite = config["suite"]
    if suite["name"] == "robustness":
      from infer.eval import robustness
      rows = robustness.suite_rows(suite["n_per_task"], suite["seed"], suite["tasks"])
    else:
      rows = data_lib.suite_rows(suite["n_per_task"], suite["seed"], suite["tasks"])
  else:
    rows = data_lib.read_eval_set(config["data"], config["slice_by"])
  rows = runner.generate(loaded, rows, runner.GenerationConfig.from_dict(gen))
  scores, examples = scoring.score_rows(rows, config["metrics"], boot["samples"], boot["seed"])
  scores["n_prompts_truncated"] = sum(r["prompt_truncated"] for r in rows)
  return scores, examples, config


def run() -> dict:
  from infer.eval import scoring

  if FLAGS.write_set:
    return write_set()
  if FLAGS.rerun:
    with open(FLAGS.rerun) as f:
      config = json.load(f)
    config.pop("out", None)
    logging.info("rerunning %s", FLAGS.rerun)
  else:
    config = config_from_flags()
  out = FLAGS.out or (os.path.dirname(os.path.abspath(FLAGS.rerun)) if FLAGS.rerun else None)
  if not out:
    raise ValueError("give --out=DIR for scores.json, examples.jsonl and config.json")
  scores, examples, config = evaluate(config)
  config["versions"] = _versions()
  config["out"] = os.path.abspath(out)
  scoring.write_jsonl(os.path.join(out, "examples.jsonl"), examples)
  scoring.write_json(os.path.join(out, "config.json"), config)
  scoring.write_json(os.path.join(out, "scores.json"), scores)
  for name, s in scores.items():
    if isinstance(s, dict) and "value" in s:
      low, high = s.get("low"), s.get("high")
      bounds = f" [{low:.4f}, {high:.4f}]" if low is not None else ""
      value = "undefined" if s["value"] is None else f"{s['value']:.4f}"
      print(f"{name:>14}: {value}{bounds}  (n={s['n']})")
  print(f"wrote {out}/scores.json, examples.jsonl, config.json")
  return scores


def write_set() -> dict:
  """--write_set: the robustness suite's eval set as jsonl (for --data or other tools)."""
  from infer.eval import robustness, tasks

  if FLAGS.suite != "robustness":
    raise ValueError("--write_set writes the generated robustness set; add --suite=robustness")
  task_names = list(FLAGS.tasks) or list(tasks.TASK_NAMES)
  n = robustness.write_set(FLAGS.write_set, FLAGS.n_per_task, FLAGS.seed, task_names)
  print(f"wrote {n} rows to {FLAGS.write_set}")
  return {"n": n}


def _versions() -> dict:
  import importlib.metadata as md
  out = {}
  for pkg in ("jax", "sacrebleu", "rouge-score", "jaxlm"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def _main(argv):
  del argv
  from infer import cli
  cli.run_cli("evaluate", run)


def main():
  define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
