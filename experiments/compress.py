r"""Compression compared on one teacher: PTQ int8 / int4, QAT int4, and distillation.

  python -m experiments.compress --preset=cpu --workdir=runs/compress
  python -m experiments.compress --preset=cpu --workdir=runs/compress --teacher=runs/quickstart
  python -m experiments.compress --preset=cpu --workdir=runs/compress --part=distill

1. trains the quickstart model into WORKDIR/teacher (or takes --teacher=RUN_DIR);
2. PTQ: int8 per channel and int4 at group sizes 32 / 64 / 128 (infer/quantize.py);
3. QAT: continues the teacher for `qat_steps` with int4 fake quantization, then exports it
   (bit-identical logits), against a float continuation for the same steps quantized
   afterwards (the fair PTQ baseline);
4. distillation (`distill_table`): one smaller student trained for the same
   steps on the labels alone, with data distillation, logit KD and on-policy distillation,
   with the teacher's cost of each;
5. writes WORKDIR/compress.json and compress.md: parameter bytes, held-out perplexity
   on the teacher's validation batches, and the change from the float model.
`--part=quant` or `--part=distill` runs one of the two tables.
Finished runs are reused when rerun (training resumes, existing exports are read back).
"""

import json
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "smoke"], "cpu: minutes on 2 cores; smoke: tests.")
flags.DEFINE_string("workdir", None, "Experiment directory (reused if it exists).")
flags.DEFINE_string("teacher", "", "A trained run to compress (default: train the quickstart "
                    "model into WORKDIR/teacher).")
flags.DEFINE_enum("part", "all", ["all", "quant", "distill"], "Which table(s) to build.")

PRESETS = {
    "cpu": {"teacher_config": "experiments/quickstart.py", "student_config":
            "experiments/distill.py", "qat_steps": 100, "kd_steps": 300, "groups": (32, 64, 128),
            "eval_batches": 8, "synthetic_prompts": 256, "task_examples": 10},
    "smoke": {"teacher_config": "experiments/quickstart.py:tiny",
              "teacher_overrides": [("model.max_len", "96")],
              "student_config": "experiments/distill.py:tiny", "qat_steps": 2, "kd_steps": 2,
              "groups": (32,), "eval_batches": 1, "synthetic_prompts": 8, "task_examples": 1,
              "student_overrides": [("data.seq_len", "64")]},
}


def heldout_perplexity(run_dir: str, data_config, n_batches: int, batch_size: int = 8) -> float:
  """exp(mean CE) of a run dir (float, quantized or QAT) on the fixed validation batches."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model import sharding  # pylint: disable=g-import-not-at-top
  from model.transformer import Transformer  # pylint: disable=g-import-not-at-top
  from train.run_data import build_run_data  # pylint: disable=g-import-not-at-top
  loaded = load_model(run_dir)
  data = build_run_data(data_config, loaded.tokenizer)
  model = Transformer(loaded.model_config, loaded.peft, loaded.quant)

  @jax.jit
  def ce_sum(params, inputs, targets):
    logits, _ = model.apply({"params": params}, inputs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.sum(jnp.take_along_axis(logp, targets[..., None], -1))

  total, count = 0.0, 0
  with sharding.use_mesh(loaded.mesh):
    for batch in data.val.eval_batches(batch_size, n_batches):
      total += float(ce_sum(loaded.params, jnp.asarray(batch["inputs"]),
                            jnp.asarray(batch["targets"])))
      count += int(np.prod(batch["targets"].shape))
  return float(np.exp(total / max(count, 1)))


def _train(config_spec: str, overrides: list, workdir: str) -> dict:
  from train.config import build_config  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  return train(build_config(config_spec, overrides), workdir)


def _quantize(src: str, out: str, scheme=None, group_size=None) -> dict:
  from infer.quantize import quantize_run  # pylint: disable=g-import-not-at-top
  from model import quant, store  # pylint: disable=g-import-not-at-top
  if not os.path.exists(out):
    return quantize_run(src, out, scheme, group_size)
  logging.info("reusing %s", out)
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  loaded = load_model(out)
  return {"bytes_after": quant.tree_bytes(loaded.params),
          **{k: v for k, v in store.read_run_config(out).section("quant").items()}}


def task_exact_match(run_dir: str, data_config, per_task: int) -> float:
  """Greedy exact match on the first `per_task` held-out rows of each embedded task."""
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model.chat import get_template  # pylint: disable=g-import-not-at-top
  from train import task_eval  # pylint: disable=g-import-not-at-top
  from train.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  loaded = load_model(run_dir)
  template = loaded.chat_template or get_template(data_config.chat_template)
  rows = task_eval.select_rows(tasks_lib.mixture("heldout", per_task, 0), per_task)
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  return task_eval.evaluate_tasks(decoder, loaded.params, loaded.tokenizer, template, rows,
                                  16)["exact_match"]


DISTILL_METHODS = (  # (row name, run dir, overrides)
    ("labels only", "student_labels_only", [("distill.kd_weight", "0.0")]),
    ("logit KD (forward KL, T=2)", "student_kd", [("distill.kd_weight", "0.5")]),
    ("data distillation", "student_data", [("distill.method", "data")]),
    ("on-policy distillation", "student_on_policy", [("distill.method", "on_policy")]),
)


def distill_table(preset: dict, workdir: str, teacher: str, ppl, exact_match) -> list[dict]:
  """The same student, same steps and batch (same student training FLOPs), four ways.

  Teacher cost is the teacher's forward FLOPs each method needs (model/flops.py): none for
  labels only; every student training token for logit KD; every token of a student
  sample (rows padded to seq_len) for on-policy; prompt + generated tokens of the
  synthetic set, once, for data distillation. On-policy also samples from the student.
  Wall seconds are measured for each student run (teacher generation included).
  """
  from model import flops  # pylint: disable=g-import-not-at-top
  from train import checkpoint  # pylint: disable=g-import-not-at-top
  from train.config import build_config  # pylint: disable=g-import-not-at-top
  teacher_config = checkpoint.load_config(teacher)
  data_config = teacher_config.data
  common = [("distill.teacher", teacher), ("train.steps", str(preset["kd_steps"])),
            ("data.data", data_config.data),
            ("data.max_corpus_bytes", str(data_config.max_corpus_bytes)),
            ("distill.synthetic_prompts", str(preset["synthetic_prompts"])),
            *preset.get("student_overrides", [])]
  rows = [dict(name="teacher", run=teacher, params=_n_params(teacher_config.model),
               ppl=ppl(teacher), exact_match=exact_match(teacher), teacher_flops=0.0,
               student_flops=0.0, wall_s=None)]
  for name, run, overrides in DISTILL_METHODS:
    run_dir = os.path.join(workdir, run)
    config = build_config(preset["student_config"], common + overrides)
    start = time.perf_counter()
    _train(preset["student_config"], common + overrides, run_dir)
    wall = time.perf_counter() - start
    seq_len, dc, train = config.data.seq_len, config.distill, config.train
    student_tokens = train.steps * train.batch_size * seq_len
    t_fwd = flops.forward_flops_per_token(teacher_config.model, seq_len)
    teacher_tokens = {"labels only": 0, "data distillation":
                      dc.synthetic_prompts * (dc.prompt_tokens + dc.synthetic_tokens)}.get(
                          name, student_tokens)
    sampling = (train.steps * train.batch_size * config.rl.max_new_tokens
                * flops.forward_flops_per_token(config.model, seq_len)
                if dc.method == "on_policy" else 0)
    rows.append(dict(
        name=name, run=run_dir, params=_n_params(config.model), ppl=ppl(run_dir),
        exact_match=exact_match(run_dir), teacher_flops=float(teacher_tokens * t_fwd),
        student_flops=float(student_tokens * flops.flops_per_token(config.model, seq_len)
                            + sampling), wall_s=wall))
    logging.info("%s: %s", name, rows[-1])
  return rows


def _n_params(model_config) -> int:
  from model import flops  # pylint: disable=g-import-not-at-top
  return int(flops.param_counts(model_config)["total"])


def quant_table(preset: dict, workdir: str, teacher: str, ppl) -> list[dict]:
  """Float, PTQ int8 / int4 (each group size), QAT int4 and its float control."""
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model import quant  # pylint: disable=g-import-not-at-top
  float_bytes = quant.tree_bytes(load_model(teacher).params)
  rows = [dict(name="float", bytes=float_bytes, ppl=ppl(teacher))]

  def add(name, run_dir, summary):
    rows.append(dict(name=name, bytes=summary["bytes_after"], ppl=ppl(run_dir),
                     logit_max_abs_err=summary.get("logit_max_abs_err")))
    logging.info("%s: %s", name, rows[-1])

  q8 = os.path.join(workdir, "ptq_int8")
  add("ptq int8", q8, _quantize(teacher, q8, "int8"))
  for g in preset["groups"]:
    out = os.path.join(workdir, f"ptq_int4_g{g}")
    add(f"ptq int4 G={g}", out, _quantize(teacher, out, "int4", g))
  g = preset["groups"][len(preset["groups"]) // 2]
  common = [("train.init_from", teacher), ("train.steps", str(preset["qat_steps"])),
            ("train.learning_rate", "3e-4"), ("train.warmup_steps", "1"),
            ("quant.group_size", str(g))] + preset.get("teacher_overrides", [])
  _train(preset["teacher_config"], common + [("quant.qat", "int4")],
         os.path.join(workdir, "qat_int4"))
  _train(preset["teacher_config"], common, os.path.join(workdir, "float_continued"))
  out = os.path.join(workdir, "qat_int4_export")
  add(f"qat int4 G={g} (exported)", out, _quantize(os.path.join(workdir, "qat_int4"), out))
  out = os.path.join(workdir, "float_continued_int4")
  add(f"float +{preset['qat_steps']} steps, ptq int4 G={g}", out,
      _quantize(os.path.join(workdir, "float_continued"), out, "int4", g))
  for row in rows:
    row["ppl_change_percent"] = 100.0 * (row["ppl"] / rows[0]["ppl"] - 1.0)
    row["size_vs_float"] = row["bytes"] / float_bytes
  return rows


def _markdown(teacher: str, result: dict) -> str:
  out = [f"# Compression of {teacher}\n"]
  if "rows" in result:
    out += ["| model | params MB | x float size | held-out ppl | ppl change |",
            "|---|---|---|---|---|"]
    out += [f"| {r['name']} | {r['bytes'] / 1e6:.2f} | {r['size_vs_float']:.3f} | "
            f"{r['ppl']:.2f} | {r['ppl_change_percent']:+.2f}% |" for r in result["rows"]]
  if "distill_rows" in result:
    out += ["", "## Distillation (same student, same steps and batch)", "",
            "| model | params | held-out ppl | task exact match | teacher fwd GFLOPs | "
            "student GFLOPs | wall s |", "|---|---|---|---|---|---|---|"]
    for r in result["distill_rows"]:
      wall = "" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
      out.append(f"| {r['name']} | {r['params']:,} | {r['ppl']:.2f} | {r['exact_match']:.3f} | "
                 f"{r['teacher_flops'] / 1e9:.1f} | {r['student_flops'] / 1e9:.1f} | {wall} |")
  return "\n".join(out) + "\n"


def run_experiment(preset_name: str, workdir: str, teacher: str = "", part: str = "all") -> dict:
  from model import store  # pylint: disable=g-import-not-at-top
  from train import checkpoint  # pylint: disable=g-import-not-at-top
  preset = PRESETS[preset_name]
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  if not teacher:  # trained (or resumed) here
    teacher = os.path.join(workdir, "teacher")
    _train(preset["teacher_config"], preset.get("teacher_overrides", []), teacher)
  elif not os.path.exists(os.path.join(teacher, store.CONFIG_FILE)):
    raise FileNotFoundError(f"--teacher={teacher} is not a run directory")
  data_config = checkpoint.load_config(teacher).data
  ppl = lambda run: heldout_perplexity(run, data_config, preset["eval_batches"])
  result = {"preset": preset_name, "teacher": teacher}
  if part in ("all", "quant"):
    result["rows"] = quant_table(preset, workdir, teacher, ppl)
  if part in ("all", "distill"):
    exact_match = lambda run: task_exact_match(run, data_config, preset["task_examples"])
    result["distill_rows"] = distill_table(preset, workdir, teacher, ppl, exact_match)
  result["wall_s"] = time.perf_counter() - start
  with open(os.path.join(workdir, "compress.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(workdir, "compress.md"), "w") as f:
    f.write(_markdown(teacher, result))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from infer import cli  # pylint: disable=g-import-not-at-top
  result = cli.run_cli("compress", lambda: run_experiment(FLAGS.preset, FLAGS.workdir,
                                                          FLAGS.teacher, FLAGS.part))
  rows = result.get("rows", []) + result.get("distill_rows", [])
  print(json.dumps({r["name"]: round(r["ppl"], 3) for r in rows}))


if __name__ == "__main__":
  app.run(main)
