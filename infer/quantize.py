r"""Post-training weight-only quantization of a run directory into a new one.

  python -m infer.quantize --workdir=runs/quickstart --scheme=int8 --out=runs/q8
  python -m infer.quantize --workdir=runs/quickstart --scheme=int4 --group_size=64 --out=runs/q4
  python -m infer.generate --workdir=runs/q4 --prompt="def f(x):"

Every projection (attention, FFN, MoE experts; the head with --include_head) is stored
as int8 per output channel or int4 in groups of --group_size input rows packed two per
byte (model/quant.py); the embedding table too with --include_embed (per token row:
model/quant_embed.py; a tied head then reads the same int table). The output run holds a `quant`
section in config.json and one params-only checkpoint, and every entry point
(infer.loading) builds the quantized model from it. A QAT run (--config.quant.qat=...)
is quantized with its own scheme by default, giving the logits of its fake-quant forward
exactly. Prints bytes before / after and the logit error on a short text.
"""

import dataclasses
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags():
  """Flags are defined by main() only, so quantize_run imports anywhere (experiments)."""
  flags.DEFINE_string("workdir", None, "Run directory to quantize (latest checkpoint).")
  flags.DEFINE_string("checkpoint", None, "A specific checkpoint: DIR/checkpoints/STEP.")
  flags.DEFINE_string("out", None, "New run directory to write (must not exist).")
  flags.DEFINE_enum("scheme", None, ["int8", "int4"], "Weight format (default: a QAT run's "
                    "own scheme).")
  flags.DEFINE_integer("group_size", None, "int4: input rows per scale, e.g. 32, 64, 128; 0 = "
                       "per output channel (default: the QAT run's, else 64).")
  flags.DEFINE_bool("symmetric", None, "Symmetric (default) or asymmetric with a zero point.")
  flags.DEFINE_bool("include_head", None, "Quantize the output projection too (default off).")
  flags.DEFINE_bool("include_embed", None, "Quantize the embedding table too (default off).")


_CHECK_TEXT = ("def main(argv):\n    \"\"\"Runs the program and returns its status.\"\"\"\n"
               "    for name in sorted(argv[1:]):\n        print(name)\n    return 0\n")


def target_config(run_quant, scheme=None, group_size=None, symmetric=None,
                  include_head=None, include_embed=None):
  """The stored QuantConfig: flags over the run's QAT settings (scheme from qat)."""
  from model.quant import QuantConfig  # pylint: disable=g-import-not-at-top
  if run_quant.stored:
    raise ValueError(f"the run is already quantized ({run_quant.scheme}); quantize the float "
                     "run it came from")
  qat = run_quant.qat
  scheme = scheme or (qat if qat != "none" else None)
  if scheme is None:
    raise ValueError("give --scheme=int8 or --scheme=int4")
  if qat != "none" and scheme != qat:
    logging.warning("run trained with quant.qat=%s but quantized to %s: logits will not equal "
                    "its fake-quant forward", qat, scheme)
  pick = lambda flag, run_value: run_value if flag is None else flag
  group_size = 0 if scheme == "int8" else pick(group_size, run_quant.group_size)
  return QuantConfig(scheme=scheme, group_size=group_size,
                     symmetric=pick(symmetric, run_quant.symmetric),
                     include_head=pick(include_head, run_quant.include_head),
                     include_embed=pick(include_embed, run_quant.include_embed))


def check_logits(loaded, quant, params_q, text: str = _CHECK_TEXT) -> dict:
  """Max |logit difference|, mean KL(float || quantized) and both perplexities on `text`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from model import sharding  # pylint: disable=g-import-not-at-top
  from model.transformer import Transformer  # pylint: disable=g-import-not-at-top

  ids = loaded.tokenizer.encode(text)[:loaded.model_config.max_len]
  tokens = jnp.asarray([ids], jnp.int32)

  def stats(params_f, params_q):
    lf, _ = Transformer(loaded.model_config, loaded.peft, loaded.quant).apply(
        {"params": params_f}, tokens)
    lq, _ = Transformer(loaded.model_config, loaded.peft, quant).apply(
        {"params": params_q}, tokens)
    logp_f, logp_q = jax.nn.log_softmax(lf), jax.nn.log_softmax(lq)
    kl = jnp.mean(jnp.sum(jnp.exp(logp_f) * (logp_f - logp_q), -1))
    nll = lambda lp: -jnp.mean(jnp.take_along_axis(lp[0, :-1], tokens[0, 1:, None], -1))
    return jnp.max(jnp.abs(lf - lq)), kl, jnp.exp(nll(logp_f)), jnp.exp(nll(logp_q))

  with sharding.use_mesh(loaded.mesh):
    err, kl, ppl_f, ppl_q = jax.jit(stats)(loaded.params, params_q)
  return {"logit_max_abs_err": float(err), "kl_mean": float(kl),
          "check_ppl_float": float(ppl_f), "check_ppl_quant": float(ppl_q),
          "check_tokens": len(ids)}


def quantize_run(path: str, out: str, scheme=None, group_size=None, symmetric=None,
                 include_head=None, include_embed=None) -> dict:
  """Writes the quantized run dir; returns a summary (bytes, logit error, seconds)."""
  import jax  # pylint: disable=g-import-not-at-top

  from infer.loading import abstract_params, load_model  # pylint: disable=g-import-not-at-top
  from infer.run_writer import write_params_run  # pylint: disable=g-import-not-at-top
  from model import quant as quant_lib  # pylint: disable=g-import-not-at-top
  from model import sharding, store  # pylint: disable=g-import-not-at-top
  if os.path.exists(out):
    raise ValueError(f"--out={out} already exists; pass a new directory")
  start = time.perf_counter()
  loaded = load_model(path)
  from model.config import require_single_stack  # pylint: disable=g-import-not-at-top
  require_single_stack(loaded.model_config, "infer.quantize")
  if loaded.peft.base_quant != "none":
    raise ValueError(f"{loaded.workdir} is a QLoRA run (peft.base_quant="
                     f"{loaded.peft.base_quant}); its base is already quantized")
  target = target_config(loaded.quant, scheme, group_size, symmetric, include_head,
                         include_embed)
  abstract_q = abstract_params(loaded.model_config, loaded.peft, loaded.mesh, target)
  shardings = jax.tree.map(lambda a: a.sharding, abstract_q)
  with sharding.use_mesh(loaded.mesh):
    params_q = jax.jit(lambda p: quant_lib.quantize_params(p, abstract_q, target),
                       out_shardings=shardings)(loaded.params)
  run = store.read_run_config(loaded.workdir)
  sections = dict(run.sections)
  sections["quant"] = dataclasses.asdict(target)
  write_params_run(loaded.workdir, out, sections, loaded.step, params_q)
  summary = {"out": out, "step": loaded.step, **dataclasses.asdict(target),
             "bytes_before": quant_lib.tree_bytes(loaded.params),
             "bytes_after": quant_lib.tree_bytes(params_q)}
  summary["compression"] = round(summary["bytes_before"] / summary["bytes_after"], 3)
  before, after = quant_lib.projection_bytes(loaded.params, params_q)
  summary.update(projection_bytes_before=before, projection_bytes_after=after,
                 projection_compression=round(before / max(after, 1), 3))
  summary.update(check_logits(loaded, target, params_q))
  summary["seconds"] = round(time.perf_counter() - start, 2)
  logging.info("quantized %s step %d -> %s (%s): %.2f MB -> %.2f MB of parameters",
               loaded.workdir, loaded.step, out, target.scheme, summary["bytes_before"] / 1e6,
               summary["bytes_after"] / 1e6)
  return summary


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import json  # pylint: disable=g-import-not-at-top

  from infer import cli  # pylint: disable=g-import-not-at-top

  def body():
    path = cli.source_run(FLAGS.checkpoint, FLAGS.workdir, FLAGS.out)
    print(json.dumps(quantize_run(path, FLAGS.out, FLAGS.scheme, FLAGS.group_size,
                                  FLAGS.symmetric, FLAGS.include_head,
                                  FLAGS.include_embed)))
  cli.run_cli("quantize", body)


def main():
  _define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
