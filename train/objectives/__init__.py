"""Training objectives as plug-ins: one file each, one signature.

An objective is built once per run, `make(model, config) -> loss`, where

  loss(params, frozen, batch, rng) -> (loss_sum, weight_sum, metric_sums)

`params` is the trainable tree (gradients are taken with respect to it alone), `frozen`
a dict of trees that never change (the frozen part of the model under "model"; later a
DPO reference, a distillation teacher). Every returned quantity is a SUM over the batch:
the train step adds them over micro-batches and divides once by the total weight, so
gradient accumulation and packing never bias the loss. Metrics are reported as
metric_sum / weight_sum.
"""

from train.objectives import classify, distill, dpo, grpo, lm, mlm, ppo, reward, seq2seq, sft

OBJECTIVES = {"lm": lm.make, "sft": sft.make, "reward": reward.make, "dpo": dpo.make,
              "grpo": grpo.make, "ppo": ppo.make, "distill": distill.make,
              "mlm": mlm.make, "classify": classify.make, "seq2seq": seq2seq.make}


def make_objective(name: str, model, config):
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)} "
                     "(--config.train.objective)")
  return OBJECTIVES[name](model, config)
