"""Getting a tokenizer for a corpus: sentencepiece trained once per corpus and settings, cached."""

import hashlib
import json
import os
import shutil
import tempfile

from absl import logging

from model.tokenizer import (CONFIG_FILE, MASK_PIECE, SP_MAX_TRAIN_BYTES,
                             SP_MAX_TRAIN_SENTENCES, SP_VERSION, ByteTokenizer, SentencePieceTokenizer, Tokenizer,
                             load_tokenizer)
from train import corpus as corpus_lib


def tokenizer_cache_key(data_config, corpus: corpus_lib.Corpus) -> str:
  """Hash of everything a trained tokenizer depends on."""
  settings = dict(fingerprint=corpus.fingerprint, model_type=data_config.sp_model_type,
                  vocab_size=data_config.sp_vocab_size,
                  character_coverage=data_config.sp_character_coverage,
                  val_fraction=data_config.val_fraction,
                  max_train_bytes=SP_MAX_TRAIN_BYTES.get(data_config.sp_model_type),
                  max_train_sentences=SP_MAX_TRAIN_SENTENCES, version=SP_VERSION)
  if wants_mask(data_config):  # only then: older caches keep their keys
    settings["mask_piece"] = MASK_PIECE
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def wants_mask(data_config) -> bool:
  """Masked-LM data (data.kind="mlm") trains its tokenizer with a [MASK] symbol."""
  return getattr(data_config, "kind", "text") == "mlm"


def get_tokenizer(data_config, corpus: corpus_lib.Corpus,
                  cache_dir: str | None = None) -> Tokenizer:
  """The tokenizer `data_config.tokenizer` names; sentencepiece is trained once per corpus+settings.

  Trains on the training split only (validation text stays unseen) and caches the result
  under `<cache_dir>/tokenizers/sp-<hash>`, written to a temporary directory then renamed.
  """
  if data_config.tokenizer == "byte":
    return ByteTokenizer(mask=wants_mask(data_config))
  if data_config.tokenizer != "sentencepiece":
    raise ValueError(f"unknown tokenizer {data_config.tokenizer!r}; set "
                     "--config.data.tokenizer=sentencepiece or byte")
  root = os.path.join(corpus_lib.resolve_cache_dir(data_config, cache_dir), "tokenizers")
  final = os.path.join(root, "sp-" + tokenizer_cache_key(data_config, corpus)[:24])
  if os.path.exists(os.path.join(final, CONFIG_FILE)):
    logging.info("loading cached tokenizer %s", final)
    try:
      return load_tokenizer(final)
    except (ValueError, OSError) as e:
      logging.warning("cached tokenizer %s is damaged (%s): training it again", final, e)
      shutil.rmtree(final, ignore_errors=True)
  train_docs, _ = corpus_lib.split_views(corpus, data_config.val_fraction)
  tokenizer = SentencePieceTokenizer.train(
      train_docs, vocab_size=data_config.sp_vocab_size, model_type=data_config.sp_model_type,
      character_coverage=data_config.sp_character_coverage,
      extra_info=dict(corpus_fingerprint=corpus.fingerprint), mask=wants_mask(data_config))
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
  try:
    tokenizer.save(tmp)
    os.replace(tmp, final)
  except OSError:
    if not os.path.exists(os.path.join(final, CONFIG_FILE)):  # not a lost race: a real error
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return tokenizer
