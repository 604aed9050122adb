"""The data a run trains on, by `data.kind`: a text corpus, or fine-tuning examples.

Returns a RunData whatever the kind, so the loop has one path. With --init_from the
tokenizer is the base run's (its ids are what the base's embeddings mean).
"""

import dataclasses
import hashlib
from typing import Any

import numpy as np
from absl import logging

from model.chat import get_template
from model.tokenizer import Tokenizer
from train import corpus as corpus_lib
from train.config import DataConfig
from train.dataset import build_datasets
from train.tokenizer import get_tokenizer


def data_fingerprint(tokenizer, train_ds, source: str) -> dict:
  """What a checkpoint was trained on: the tokenizer and a hash of the training tokens
  (for a memory-mapped corpus, its cache's content checksum), compared on resume."""
  checksum = getattr(train_ds, "checksum", None)
  if checksum is None:
    digest = hashlib.sha256()
    for key in sorted(getattr(train_ds, "rows", {})):
      digest.update(np.ascontiguousarray(train_ds.rows[key]).tobytes())
    checksum = digest.hexdigest()[:32]
  return {"tokenizer": tokenizer.fingerprint, "train_tokens": checksum, "source": source}


@dataclasses.dataclass
class RunData:
  tokenizer: Tokenizer
  train: Any  # .batch(seed, step, batch_size, process_index, process_count)
  val: Any  # .eval_batches(batch_size, n_batches, ...)
  info: dict  # written to data.json
  heldout: list | None = None  # rows with a checkable answer (fine-tuning tasks)
  template: Any = None  # model.chat.ChatTemplate for fine-tuning data


def build_run_data(data_config: DataConfig, tokenizer: Tokenizer | None = None,
                   seed: int = 0, rl_config=None, ppo: bool = False,
                   run_config=None) -> RunData:
  if data_config.kind == "seq2seq":  # encoder-decoder data: train/data/seq2seq.py
    return _seq2seq_data(data_config, tokenizer, seed)
  if data_config.kind == "span_corruption":  # train/data/span_corruption.py
    return _span_corruption_data(data_config, tokenizer)
  if data_config.kind in ("mlm", "labelled"):  # encoder data: train/data/mlm.py, labelled.py
    return _encoder_data(data_config, tokenizer, seed, run_config)
  if data_config.kind == "text":
    tokenizer, train_ds, val_ds, info = build_datasets(data_config, tokenizer=tokenizer)
    return RunData(tokenizer, train_ds, val_ds, info)
  from train.data.sft import build_sft_datasets  # pylint: disable=g-import-not-at-top
  if tokenizer is None:
    # No base run: the tokenizer of the embedded pretraining corpus (trained once, cached).
    corpus_config = dataclasses.replace(data_config, data="", kind="text")
    logging.info("no --init_from: using the embedded corpus's tokenizer for fine-tuning data")
    tokenizer = get_tokenizer(corpus_config, corpus_lib.load_corpus(corpus_config))
  template = get_template(data_config.chat_template)
  if data_config.kind in ("preference", "rollout"):
    return _alignment_data(data_config, tokenizer, template, seed, rl_config, ppo)
  train_ds, val_ds, heldout, info = build_sft_datasets(
      tokenizer, template, data_config.seq_len, data_path=data_config.data,
      pack=data_config.pack, n_train_per_task=data_config.sft_train_per_task,
      n_heldout_per_task=data_config.sft_heldout_per_task, seed=seed)
  info = dict(info, tokenizer=tokenizer.describe(), chat_template=template.name)
  return RunData(tokenizer, train_ds, val_ds, info, heldout=heldout, template=template)


def _encoder_data(data_config: DataConfig, tokenizer: Tokenizer | None, seed: int,
                  run_config) -> RunData:
  """kind="mlm": corpus windows, masked; kind="labelled": {text, label} rows."""
  if data_config.kind == "mlm":
    from train.data.mlm import MlmDataset, require_mask_id  # pylint: disable=g-import-not-at-top
    if tokenizer is not None:
      require_mask_id(tokenizer)  # before tokenizing a corpus with it
    tokenizer, train_ds, val_ds, info = build_datasets(data_config, tokenizer=tokenizer)
    mlm_config = run_config.mlm
    return RunData(tokenizer, MlmDataset(train_ds, tokenizer, mlm_config),
                   MlmDataset(val_ds, tokenizer, mlm_config),
                   dict(info, mlm=dataclasses.asdict(mlm_config)))
  from train.data.labelled import build_labelled_datasets  # pylint: disable=g-import-not-at-top
  if tokenizer is None:
    corpus_config = dataclasses.replace(data_config, data="", kind="text")
    logging.info("no --init_from: using the embedded corpus's tokenizer for labelled data")
    tokenizer = get_tokenizer(corpus_config, corpus_lib.load_corpus(corpus_config))
  task = run_config.classify.task if run_config is not None else "auto"
  train_ds, val_ds, info = build_labelled_datasets(tokenizer, data_config, task, seed)
  return RunData(tokenizer, train_ds, val_ds, dict(info, tokenizer=tokenizer.describe()))


def _seq2seq_data(data_config: DataConfig, tokenizer: Tokenizer | None,
                  seed: int) -> RunData:
  """kind="seq2seq": {source, target} rows (a jsonl, or the embedded number words)."""
  from train.data.seq2seq import build_seq2seq_datasets  # pylint: disable=g-import-not-at-top
  if tokenizer is None:
    corpus_config = dataclasses.replace(data_config, data="", kind="text")
    logging.info("no --init_from: the embedded corpus's tokenizer (%s) for seq2seq data",
                 data_config.tokenizer)
    corpus = (None if data_config.tokenizer == "byte"  # bytes need no corpus
              else corpus_lib.load_corpus(corpus_config))
    tokenizer = get_tokenizer(corpus_config, corpus)
  train_ds, val_ds, heldout, info = build_seq2seq_datasets(
      tokenizer, data_config.source_len or data_config.seq_len, data_config.seq_len,
      data_path=data_config.data, n_train=data_config.seq2seq_train,
      n_heldout=data_config.seq2seq_heldout, seed=seed,
      directions=data_config.seq2seq_directions, max_number=data_config.seq2seq_max_number,
      val_fraction=max(data_config.val_fraction, 0.02))
  del heldout  # scored by decoding (experiments/architectures.py), not by task_eval's checkers
  return RunData(tokenizer, train_ds, val_ds, dict(info, tokenizer=tokenizer.describe()))


def _span_corruption_data(data_config: DataConfig,
                          tokenizer: Tokenizer | None) -> RunData:
  """kind="span_corruption": corpus windows of source_len tokens, T5-corrupted per batch."""
  from train.data import span_corruption  # pylint: disable=g-import-not-at-top
  text_config = dataclasses.replace(data_config, kind="text",
                                    seq_len=data_config.source_len or data_config.seq_len)
  tokenizer, train_ds, val_ds, info = build_datasets(text_config, tokenizer=tokenizer)
  tokenizer = span_corruption.with_sentinels(tokenizer, data_config.span_sentinels)
  make = lambda ds: span_corruption.SpanCorruptionDataset(
      ds, tokenizer, data_config.seq_len, data_config.span_noise_density,
      data_config.span_mean_length)
  return RunData(tokenizer, make(train_ds), make(val_ds),
                 dict(info, kind="span_corruption", sentinel_ids=tokenizer.sentinel_ids))


def _alignment_data(data_config: DataConfig, tokenizer: Tokenizer, template, seed: int,
                    rl_config, ppo: bool) -> RunData:
  """kind="preference": chosen/rejected pairs; kind="rollout": prompts the policy samples."""
  if data_config.kind == "preference":
    from train.data.preference import build_preference_datasets  # pylint: disable=g-import-not-at-top
    train_ds, val_ds, heldout, info = build_preference_datasets(
        tokenizer, template, data_config.seq_len, data_path=data_config.data,
        n_train_per_task=data_config.pref_train_per_task,
        n_heldout_per_task=data_config.pref_heldout_per_task, seed=seed)
  else:
    from train.rl.rollout import build_rollout_data  # pylint: disable=g-import-not-at-top
    train_ds, val_ds, heldout, info = build_rollout_data(
        tokenizer, template, data_config, rl_config, seed=seed, ppo=ppo)
  info = dict(info, tokenizer=tokenizer.describe(), chat_template=template.name)
  return RunData(tokenizer, train_ds, val_ds, info, heldout=heldout, template=template)
