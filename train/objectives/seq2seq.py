"""Sequence-to-sequence: cross-entropy on the decoder's target tokens given the source.

Batch: {source, source_valid} for the encoder and {inputs, targets, weights} for the
decoder (train/data/seq2seq.py). Sums over target tokens with their weights (0 on padding),
normalised once over the global batch by the train step, like every objective.
"""

from train.objectives.common import apply_model, weighted_token_loss

REQUIRED = ("source", "source_valid", "inputs", "targets", "weights")


def make(model, config):
  if config.model.arch != "encoder_decoder":
    raise ValueError(f"the seq2seq objective trains an encoder-decoder; got model.arch="
                     f"{config.model.arch!r}: set --config.model.arch=encoder_decoder (or use "
                     "experiments/seq2seq.py), or train a decoder on prompt/response pairs "
                     "with the sft objective")
  if config.data.kind not in ("seq2seq", "span_corruption"):
    raise ValueError(f"the seq2seq objective reads {{source, target}} rows: set "
                     f"--config.data.kind=seq2seq (jsonl or the embedded set) or "
                     f"span_corruption (plain text), not {config.data.kind!r}")

  def loss(params, frozen, batch, rng, train=True):
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
      raise ValueError(f"the seq2seq objective needs batch keys {list(REQUIRED)}; missing "
                       f"{missing}: use --config.data.kind=seq2seq data")
    logits_BLV, aux = apply_model(model, params, frozen, rng, train, batch["inputs"],
                                  source_BS=batch["source"],
                                  source_valid_BS=batch["source_valid"] > 0)
    return weighted_token_loss(config.model, logits_BLV, aux, batch["targets"],
                               batch["weights"])
  return loss
