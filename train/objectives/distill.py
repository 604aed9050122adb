"""Logit distillation: the student matches a frozen teacher's next-token distributions.

Per target token (weights mask prompt and padding, as for lm / sft):
  kd_weight * T^2 * D(p_teacher^T, p_student^T) + (1 - kd_weight) * CE(student, target)
where p^T = softmax(logits / T) and D is one of
  forward_kl  KL(p_t || p_s)  = sum p_t (log p_t - log p_s)        (Hinton et al. 2015)
  reverse_kl  KL(p_s || p_t)                                       (mode seeking)
  jsd         beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
              (the generalised JSD of GKD, Agarwal et al. 2024)
The T^2 factor keeps gradient magnitudes comparable across temperatures.
Data (distill.method=data): the teacher generates text once (train/data/teacher_text.py)
and the student trains with plain cross-entropy on real + synthetic rows.
On-policy (distill.method=on_policy, GKD): the rows are the student's own samples on task
prompts (data.kind=rollout, train/rl/rollout.py, drawn with the current parameters before
every step) and the loss is the divergence alone on the sampled reply tokens: the teacher
scores where the student actually goes. The teacher is
`frozen["teacher"]`: the params of the run `--config.distill.teacher`, loaded once by
`loss.load_frozen(mesh)` with that run's own model / PEFT / quant config (a quantized
teacher works). Student and teacher must share the tokenizer (train/run_setup.py makes a
fresh student use the teacher's).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp

from absl import logging

from model import store
from model.config import require_single_stack
from model.tokenizer import load_tokenizer
from model.transformer import Transformer
from train.objectives.common import forward, moe_aux_sums, token_cross_entropy


def _kl(logp_a, logp_b):
  """sum_v p_a (log p_a - log p_b) over the last axis (0 where p_a = 0)."""
  return jnp.sum(jnp.exp(logp_a) * (logp_a - logp_b), axis=-1)


def divergence(student_BLV, teacher_BLV, kind: str = "forward_kl", temperature: float = 1.0,
               beta: float = 0.5):
  """Per-token T^2 * D(teacher, student) at temperature T, float32 [B, L]."""
  t = float(temperature)
  logp_s = jax.nn.log_softmax(student_BLV.astype(jnp.float32) / t, axis=-1)
  logp_t = jax.nn.log_softmax(teacher_BLV.astype(jnp.float32) / t, axis=-1)
  if kind == "forward_kl":
    d = _kl(logp_t, logp_s)
  elif kind == "reverse_kl":
    d = _kl(logp_s, logp_t)
  elif kind == "jsd":
    logp_m = jnp.logaddexp(jnp.log(beta) + logp_t, jnp.log1p(-beta) + logp_s)
    d = beta * _kl(logp_t, logp_m) + (1.0 - beta) * _kl(logp_s, logp_m)
  else:
    raise ValueError(f"unknown divergence {kind!r}; use forward_kl, reverse_kl or jsd "
                     "(--config.distill.divergence)")
  return (t * t) * d


def teacher_tokenizer(config, student_tokenizer=None):
  """The teacher's tokenizer; a student tokenizer (from --init_from) must equal it."""
  teacher_dir = config.distill.teacher
  if not os.path.isdir(teacher_dir):
    raise FileNotFoundError(f"--config.distill.teacher={teacher_dir!r} is not a directory; "
                            "pass the --workdir of a trained teacher run")
  tokenizer = load_tokenizer(os.path.join(teacher_dir, store.TOKENIZER_DIR))
  if student_tokenizer is not None and student_tokenizer.fingerprint != tokenizer.fingerprint:
    raise ValueError(
        f"teacher/student tokenizer mismatch: {teacher_dir} and --init_from="
        f"{config.train.init_from} tokenize differently, so their logits index different "
        "tokens; start the student from a run with the teacher's tokenizer, or train it "
        "fresh (it then takes the teacher's tokenizer)")
  return tokenizer


def adapt_config(config):
  """On-policy distillation reads student samples: data.kind becomes "rollout"."""
  if config.distill.method == "on_policy" and config.data.kind != "rollout":
    logging.info("distill.method=on_policy: the student samples replies to the task prompts "
                 "(data.kind=rollout)")
    data = dataclasses.replace(config.data, kind="rollout", pack=False, data="")
    config = dataclasses.replace(config, data=data)
  return config


def make(model, config):
  dc = config.distill
  if not dc.teacher:
    raise ValueError("train.objective=distill needs a teacher run: "
                     "--config.distill.teacher=RUN_DIR")
  if dc.method == "data":  # the teacher already spoke: its text is in the batches
    from train.objectives import lm  # pylint: disable=g-import-not-at-top
    return lm.make(model, config)
  on_policy = dc.method == "on_policy"
  if on_policy and config.data.kind != "rollout":
    raise ValueError("distill.method=on_policy trains on the student's samples: set "
                     "--config.data.kind=rollout")
  kd_weight = 1.0 if on_policy else dc.kd_weight  # no hard labels on the student's samples
  run = store.read_run_config(dc.teacher)
  require_single_stack(run.model_config(), f"distillation (teacher {dc.teacher})")
  require_single_stack(config.model, "distillation (student)")
  teacher = Transformer(run.model_config(), run.peft_config(), run.quant_config())
  vocab = min(config.model.vocab_size, teacher.config.vocab_size)

  def loss(params, frozen, batch, rng, train=True):
    logits_BLV, aux = forward(model, params, frozen, batch, rng, train)
    teacher_BLV, _ = forward(teacher, frozen["teacher"], None, batch, rng, train=False)
    teacher_BLV = jax.lax.stop_gradient(teacher_BLV)
    # Ids past the shared tokenizer's vocabulary are padding rows of either table.
    kd_BL = divergence(logits_BLV[..., :vocab], teacher_BLV[..., :vocab], dc.divergence,
                       dc.temperature, dc.jsd_beta)
    ce_BL, correct_BL = token_cross_entropy(logits_BLV, batch["targets"])
    weights_BL = batch.get("weights")
    weights_BL = (jnp.ones_like(ce_BL) if weights_BL is None
                  else weights_BL.astype(jnp.float32))
    weight_sum = jnp.sum(weights_BL)
    kd_sum, ce_sum = jnp.sum(kd_BL * weights_BL), jnp.sum(ce_BL * weights_BL)
    aux_loss, aux_metrics = moe_aux_sums(config.model, aux, weight_sum)
    total = kd_weight * kd_sum + (1.0 - kd_weight) * ce_sum + aux_loss
    metrics = {"kd_loss": kd_sum, "ce_loss": ce_sum,
               "token_accuracy": jnp.sum(correct_BL * weights_BL), **aux_metrics}
    return total, weight_sum, metrics

  def load_frozen(mesh):
    """{"teacher": params} restored onto `mesh` (params only, no optimizer state)."""
    from infer.loading import abstract_params  # pylint: disable=g-import-not-at-top
    abstract = abstract_params(teacher.config, teacher.peft, mesh, teacher.quant)
    params, _, _ = store.restore_params(dc.teacher, abstract, version=run.version)
    return {"teacher": params}

  loss.load_frozen = load_frozen
  return loss
