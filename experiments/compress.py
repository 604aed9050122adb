r"""Compression compared on one teacher: PTQ int8 / int4, QAT int4, logit distillation.

  python -m experiments.compress --preset=cpu --workdir=runs/compress
  python -m experiments.compress --preset=cpu --workdir=runs/compress --teacher=runs/quickstart

1. trains the quickstart model into WORKDIR/teacher (or takes --teacher=RUN_DIR);
2. PTQ: int8 per channel and int4 at group sizes 32 / 64 / 128 (infer/quantize.py);
3. QAT: continues the teacher for `qat_steps` with int4 fake quantization, then exports it
   (bit-identical logits), against a float continuation for the same steps quantized
   afterwards (the fair PTQ baseline);
4. KD: a smaller student trained with logit distillation against the same student
   trained on the labels alone, same steps;
5. writes WORKDIR/compress.json and compress.md: parameter bytes, held-out perplexity
   on the teacher's validation batches, and the change from the float model.
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

PRESETS = {
    "cpu": {"teacher_config": "experiments/quickstart.py", "student_config":
            "experiments/distill.py", "qat_steps": 100, "kd_steps": 300, "groups": (32, 64, 128),
            "eval_batches": 8},
    "smoke": {"teacher_config": "experiments/quickstart.py:tiny",
              "teacher_overrides": [("model.max_len", "96")],
              "student_config": "experiments/distill.py:tiny", "qat_steps": 2, "kd_steps": 2,
              "groups": (32,), "eval_batches": 1},
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


def run_experiment(preset_name: str, workdir: str, teacher: str = "") -> dict:
  from model import quant, store  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
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
  kd = [("distill.teacher", teacher), ("train.steps", str(preset["kd_steps"])),
        ("data.data", data_config.data), ("data.max_corpus_bytes",
                                          str(data_config.max_corpus_bytes))]
  for name, weight in (("student kd", "0.5"), ("student labels only", "0.0")):
    run_dir = os.path.join(workdir, name.replace(" ", "_"))
    _train(preset["student_config"], kd + [("distill.kd_weight", weight)], run_dir)
    rows.append(dict(name=name, bytes=quant.tree_bytes(load_model(run_dir).params),
                     ppl=ppl(run_dir)))
  for row in rows:
    row["ppl_change_percent"] = 100.0 * (row["ppl"] / rows[0]["ppl"] - 1.0)
    row["size_vs_float"] = row["bytes"] / float_bytes
  result = {"preset": preset_name, "teacher": teacher, "rows": rows,
            "wall_s": time.perf_counter() - start}
  with open(os.path.join(workdir, "compress.json"), "w") as f:
    json.dump(result, f, indent=2)
  lines = ["| model | params MB | x float size | held-out ppl | ppl change |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['name']} | {r['bytes'] / 1e6:.2f} | {r['size_vs_float']:.3f} | "
            f"{r['ppl']:.2f} | {r['ppl_change_percent']:+.2f}% |" for r in rows]
  with open(os.path.join(workdir, "compress.md"), "w") as f:
    f.write(f"# Compression of {teacher}\n\n" + "\n".join(lines) + "\n")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from infer import cli  # pylint: disable=g-import-not-at-top
  result = cli.run_cli("compress", lambda: run_experiment(FLAGS.preset, FLAGS.workdir,
                                                          FLAGS.teacher))
  print(json.dumps({r["name"]: round(r["ppl"], 3) for r in result["rows"]}))


if __name__ == "__main__":
  app.run(main)
