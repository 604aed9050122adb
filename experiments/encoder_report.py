r"""The encoder's figures: classification accuracy and embedding retrieval, pretrained vs not.

  python -m experiments.encoder_report --preset=cpu --workdir=runs/encoder_report

`encoder_rows(workdir, preset) -> dict` (experiments/architectures.py calls it):
1. masked-LM pretraining of an encoder on the embedded stdlib corpus (experiments/encoder.py);
2. classification of the embedded labelled set (which task an instruction prompt belongs
   to; held-out prompts never trained on), fine-tuned from the pretrained encoder and from
   a randomly initialised one of the same shape and budget; against the majority class;
3. retrieval on a held-out set generated from the standard library: the query is a
   function's docstring summary line, the documents are all "module.name(signature)"
   strings; recall@k of the right function by cosine similarity of mean-pooled embeddings
   (infer/embed.py), for the pretrained encoder, the same encoder at random init, and
   random ranking (k / N).
Writes encoder_report.json and encoder_report.md under the workdir.
"""

import dataclasses
import importlib
import inspect
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import encoder
from infer.eval import tasks as tasks_lib
from infer.embed import Embedder, nearest
from model.transformer import Transformer
from train.loop import train

PRESETS = {
    # ~minutes on a busy 2-core CPU.
    "cpu": dict(d_model=128, n_layers=4, n_heads=4, seq_len=128, mlm_steps=400,
                cls_steps=120, cls_few_steps=12, batch=32, corpus_bytes=4_000_000, per_task=200),
    # seconds: for tests.
    "tiny": dict(d_model=32, n_layers=1, n_heads=2, seq_len=32, mlm_steps=4, cls_steps=4, cls_few_steps=2,
                 batch=8, corpus_bytes=200_000, per_task=8),
}
RECALL_AT = (1, 5, 10)


def retrieval_set() -> tuple[list[str], list[str]]:
  """(queries, documents), query i's answer is document i: docstring line -> signature."""
  queries, docs = [], []
  for qualname in tasks_lib.STDLIB_FUNCTIONS:
    module_name, _, attr = qualname.rpartition(".")
    fn = getattr(importlib.import_module(module_name), attr)
    doc = inspect.getdoc(fn) or ""
    summary = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if len(summary) < 12:
      continue
    queries.append(summary)
    docs.append(f"{qualname}{inspect.signature(fn)}")
  return queries, docs


def recall_at(queries_QD, docs_ND, ks=RECALL_AT) -> dict:
  _, index_QK = nearest(queries_QD, docs_ND, max(ks))
  hit_QK = index_QK == np.arange(len(queries_QD))[:, None]
  return {f"recall@{k}": float(hit_QK[:, :k].any(1).mean()) for k in ks}


def _configs(preset: str):
  p = PRESETS[preset]
  base = encoder.get_config()
  model = dataclasses.replace(base.model, d_model=p["d_model"], n_layers=p["n_layers"],
                              n_heads=p["n_heads"], max_len=max(256, p["seq_len"]))
  tokenizer = "byte" if preset == "tiny" else "sentencepiece"
  mlm = dataclasses.replace(
      base, model=model,
      data=dataclasses.replace(base.data, seq_len=p["seq_len"], tokenizer=tokenizer,
                               max_corpus_bytes=p["corpus_bytes"]),
      train=dataclasses.replace(base.train, steps=p["mlm_steps"], batch_size=p["batch"],
                                eval_every=0, checkpoint_every=p["mlm_steps"]))
  cls = encoder.get_config("classify")
  cls = dataclasses.replace(
      cls, model=model,
      data=dataclasses.replace(cls.data, tokenizer=tokenizer, max_corpus_bytes=p["corpus_bytes"],
                               sft_train_per_task=p["per_task"]),
      train=dataclasses.replace(cls.train, steps=p["cls_steps"], batch_size=p["batch"],
                                eval_every=0, eval_batches=1000,
                                checkpoint_every=p["cls_steps"]))
  return mlm, cls


def _majority(train_labels, val_labels) -> float:
  values, counts = np.unique(train_labels, return_counts=True)
  return float(np.mean(np.asarray(val_labels) == values[np.argmax(counts)]))


def encoder_rows(workdir: str, preset: str = "cpu") -> dict:
  """Runs the three steps above in `workdir` (resumes finished runs); returns the figures."""
  if preset not in PRESETS:
    raise ValueError(f"--preset={preset!r} is not one of {sorted(PRESETS)}")
  mlm_config, cls_config = _configs(preset)
  bert = os.path.join(workdir, "mlm")
  mlm = train(mlm_config, bert)
  rows = {"preset": preset, "mlm_val_loss": mlm["val_loss"], "mlm_steps": mlm["step"],
          "params": mlm["params"], "flops_per_token": mlm["flops_per_token"]}
  few = PRESETS[preset]["cls_few_steps"]
  rows["classify_steps"], rows["classify_few_steps"] = cls_config.train.steps, few
  for name, init_from in (("pretrained", bert), ("random_init", "")):
    config = dataclasses.replace(cls_config, train=dataclasses.replace(
        cls_config.train, init_from=init_from))
    out = train(config, os.path.join(workdir, f"classify_{name}"))
    rows[f"classify_accuracy_{name}"] = out["val_accuracy"]
    # Sample efficiency: the same fine-tuning cut to a few steps.
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, steps=few, warmup_steps=1, checkpoint_every=few))
    out = train(config, os.path.join(workdir, f"classify_{name}_{few}steps"))
    rows[f"classify_accuracy_{name}_few_steps"] = out["val_accuracy"]
  from train.data.labelled import embedded_rows  # pylint: disable=g-import-not-at-top
  per_task = PRESETS[preset]["per_task"]
  rows["classify_accuracy_majority_few_steps"] = rows["classify_accuracy_majority"] = _majority(
      [r["label"] for r in embedded_rows("train", per_task)],
      [r["label"] for r in embedded_rows("heldout", cls_config.data.sft_heldout_per_task)])
  rows["classify_heldout_rows"] = len(tasks_lib.TASK_NAMES) * cls_config.data.sft_heldout_per_task

  queries, docs = retrieval_set()
  emb = Embedder(bert)
  rows.update({f"retrieval_pretrained_{k}": v
               for k, v in recall_at(emb.embed(queries), emb.embed(docs)).items()})
  random_params = nn.unbox(Transformer(emb.config).init(
      jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  emb.params = random_params
  rows.update({f"retrieval_random_init_{k}": v
               for k, v in recall_at(emb.embed(queries), emb.embed(docs)).items()})
  rows.update({f"retrieval_chance_recall@{k}": k / len(docs) for k in RECALL_AT})
  rows["retrieval_pairs"] = len(docs)
  return rows


def markdown(rows: dict) -> str:
  lines = [f"# Encoder report (preset {rows['preset']})", "",
           f"Masked-LM pretraining: {rows['mlm_steps']} steps, {rows['params']:,} parameters, "
           f"held-out MLM loss {rows['mlm_val_loss']:.3f}.", "",
           f"| classification ({rows['classify_heldout_rows']} held-out prompts) | accuracy after "
           f"{rows['classify_few_steps']} steps | after {rows['classify_steps']} steps |",
           "|---|---|---|"]
  for name in ("pretrained", "random_init", "majority"):
    lines.append(f"| {name.replace('_', ' ')} | {rows[f'classify_accuracy_{name}_few_steps']:.3f} "
                 f"| {rows[f'classify_accuracy_{name}']:.3f} |")
  lines += ["", f"| retrieval ({rows['retrieval_pairs']} docstring -> signature pairs) | "
            + " | ".join(f"recall@{k}" for k in RECALL_AT) + " |",
            "|---|" + "---|" * len(RECALL_AT)]
  for name in ("pretrained", "random_init", "chance"):
    lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(
        f"{rows[f'retrieval_{name}_recall@{k}']:.3f}" for k in RECALL_AT) + " |")
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program (experiments/architectures.py imports this file)."""
  flags.DEFINE_string("workdir", "runs/encoder_report", "Where the runs and the report go.")
  flags.DEFINE_enum("preset", "cpu", sorted(PRESETS), "Sizes: cpu (minutes) or tiny (tests).")


def _main(argv):
  del argv
  from infer import cli  # pylint: disable=g-import-not-at-top

  def body():
    rows = encoder_rows(FLAGS.workdir, FLAGS.preset)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "encoder_report.json"), "w") as f:
      json.dump(rows, f, indent=2)
    text = markdown(rows)
    with open(os.path.join(FLAGS.workdir, "encoder_report.md"), "w") as f:
      f.write(text)
    logging.info("wrote %s/encoder_report.{json,md}", FLAGS.workdir)
    print(text)
    print(json.dumps(rows))

  cli.run_cli("encoder_report", body)


if __name__ == "__main__":
  _define_flags()
  app.run(_main)
