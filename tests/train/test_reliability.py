"""Fault injection: run-directory lock, verified resume, checkpoint fallback, token-cache
integrity, validated options and one-line errors for file-system failures."""

import errno
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from infer import cli
from infer.loading import load_model
from model import store
from model.run_lock import RunDirBusy, RunLock
from train.config import build_config
from train.dataset import build_datasets, verify_token_files
from train.loop import train


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "def", "return", "(", ")", ":", "\n"]
  path.write_text(" ".join(rng.choice(words, size=30_000)))
  return path


def _config(text_file, **train):
  pairs = [("data.data", str(text_file)), ("train.eval_every", "0")]
  pairs += [(f"train.{k}", str(v)) for k, v in train.items()]
  return build_config("experiments/quickstart.py:tiny", pairs)


def _params(workdir, step=None):
  return [np.asarray(x) for x in jax.tree.leaves(load_model(str(workdir), step=step).params)]


# -- lock ----------------------------------------------------------------------------------

def test_a_live_lock_is_a_clear_error_naming_its_owner(tmp_path):
  with RunLock(str(tmp_path), "train"):
    with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
      with RunLock(str(tmp_path), "generate"):
        pass
  with RunLock(str(tmp_path), "train"):  # released: free again
    pass


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  code = ("import sys, time; sys.path.insert(0, %r)\n"
          "from model.run_lock import RunLock\n"
          "with RunLock(%r, 'train'):\n"
          "  print('locked', flush=True); time.sleep(60)\n") % (os.getcwd(), str(tmp_path))
  child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "locked"
  with pytest.raises(RunDirBusy, match=f"pid {child.pid}"):
    with RunLock(str(tmp_path), "train"):
      pass
  child.send_signal(signal.SIGKILL)
  child.wait()
  with RunLock(str(tmp_path), "train"):
    pass
  assert f"pid {child.pid}" in caplog.text and "no longer running" in caplog.text


def test_training_refuses_a_locked_workdir(tmp_path, text_file):
  with RunLock(str(tmp_path), "another trainer"):
    with pytest.raises(ValueError, match="is in use by another trainer"):
      train(_config(text_file, steps=2), str(tmp_path))


def test_workdir_that_is_a_file(tmp_path, text_file):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    train(_config(text_file, steps=2), str(path))


# -- verified resume, checkpoint fallback ------------------------------------------------

@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  train(_config(text_file, steps=8, checkpoint_every=4), str(workdir))
  return workdir


def test_resume_refuses_changed_training_data(tmp_path, text_file):
  data = tmp_path / "mine.txt"
  shutil.copy(text_file, data)
  config = build_config("experiments/quickstart.py:tiny", [
      ("data.data", str(data)), ("train.steps", "4"), ("train.eval_every", "0")])
  train(config, str(tmp_path / "run"), stop_at_step=2)
  config_before = open(tmp_path / "run" / "config.json").read()
  data.write_text(data.read_text()[::-1])  # same size, other tokens
  with pytest.raises(ValueError, match="trained on other data.*training tokens"):
    train(config, str(tmp_path / "run"))
  assert open(tmp_path / "run" / "config.json").read() == config_before  # nothing rewritten
  accepting = build_config("experiments/quickstart.py:tiny", [
      ("data.data", str(data)), ("train.steps", "4"), ("train.eval_every", "0"),
      ("train.accept_data_change", "true")])
  assert train(accepting, str(tmp_path / "run"))["step"] == 4


def _damage(workdir, step):
  item = workdir / store.CHECKPOINT_DIR / str(step) / store.PARAMS_ITEM
  files = sorted(p for p in item.rglob("*") if p.is_file() and p.stat().st_size > 0)
  for path in files:
    if "ocdbt" in str(path) or path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:10])  # truncated data
  return item


def test_decoding_falls_back_from_a_damaged_latest_checkpoint(tmp_path, straight_run, caplog):
  run = tmp_path / "run"
  shutil.copytree(straight_run, run)
  _damage(run, 8)
  loaded = load_model(str(run))
  assert loaded.step == 4 and "step 8" in caplog.text and "damaged" in caplog.text
  for a, b in zip(jax.tree.leaves(loaded.params), _params(straight_run, step=4)):
    np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(ValueError, match="step 8 .* is damaged"):
    load_model(str(run), step=8)


def test_training_resumes_from_the_newest_intact_checkpoint(tmp_path, straight_run, text_file):
  run = tmp_path / "run"
  shutil.copytree(straight_run, run)
  _damage(run, 8)
  summary = train(_config(text_file, steps=8, checkpoint_every=4), str(run))
  assert summary["start_step"] == 4 and summary["step"] == 8
  assert (run / "damaged_checkpoints" / "8").is_dir()  # kept, not deleted
  for a, b in zip(_params(run), _params(straight_run)):
    np.testing.assert_array_equal(a, b)  # the redone steps are bit-exact


# -- token cache -----------------------------------------------------------------------------

def test_a_damaged_token_cache_is_detected_and_rebuilt(tmp_path, text_file, caplog):
  config = build_config("experiments/quickstart.py:tiny",
                        [("data.data", str(text_file)), ("data.cache_dir", str(tmp_path))])
  _, train_ds, _, info = build_datasets(config.data)
  directory = info["tokens_dir"]
  reference = np.array(train_ds.tokens)
  assert verify_token_files(directory) is None
  shutil.copy(os.path.join(directory, "val-00000.bin"), os.path.join(directory, "train-00000.bin"))
  assert "train-00000.bin" in verify_token_files(directory)
  _, again, _, _ = build_datasets(config.data)
  np.testing.assert_array_equal(np.asarray(again.tokens), reference)
  assert "damaged" in caplog.text and "rebuilding" in caplog.text
  with open(os.path.join(directory, "train-00000.bin"), "r+b") as f:
    f.truncate(100)
  assert "bytes, expected" in verify_token_files(directory)


# -- options and file-system errors ------------------------------------------------------

@pytest.mark.parametrize("key,value,match", [
    ("train.keep_checkpoints", "0", "keep_checkpoints must be >= 1"),
    ("train.eval_batches", "0", "eval_batches must be >= 1"),
    ("train.learning_rate", "nan", "learning_rate=nan must be a finite number"),
    ("train.steps", "-3", "steps must be >= 1"),
    ("train.grad_accum", "0", "grad_accum must be >= 1"),
])
def test_bad_numbers_are_refused_at_the_boundary(key, value, match):
  with pytest.raises(ValueError, match=match):
    build_config("experiments/quickstart.py", [(key, value)])


def test_disk_full_and_read_only_are_one_line_errors(tmp_path):
  def full():
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt"))

  with pytest.raises(SystemExit, match="No space left on device.*ckpt.*free disk space"):
    cli.run_cli("train", full)

  def read_only():
    raise OSError(errno.EROFS, "Read-only file system", "/ro/run")

  with pytest.raises(SystemExit, match="Read-only file system \\(/ro/run\\).*read-only"):
    cli.run_cli("train", read_only)

  def bug():
    raise OSError(errno.EIO, "Input/output error")

  with pytest.raises(OSError):  # unanticipated: the traceback is kept
    cli.run_cli("train", bug)


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, text_file,
                                                                  monkeypatch):
  run = tmp_path / "run"
  train(_config(text_file, steps=4, checkpoint_every=2), str(run), stop_at_step=2)
  real_save = store.save_checkpoint

  def failing_save(manager, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints"))
    return real_save(manager, step, *args, **kwargs)

  monkeypatch.setattr(store, "save_checkpoint", failing_save)
  with pytest.raises(OSError):
    train(_config(text_file, steps=4, checkpoint_every=2), str(run))
  monkeypatch.undo()
  assert store.checkpoint_steps(str(run)) == [2]
  assert load_model(str(run)).step == 2
  assert train(_config(text_file, steps=4, checkpoint_every=2), str(run))["step"] == 4



def test_a_corrupt_sentencepiece_model_is_named_and_a_cached_one_retrained(tmp_path, caplog):
  from model.tokenizer import SentencePieceTokenizer, load_tokenizer
  from train.corpus import load_corpus
  from train.tokenizer import get_tokenizer
  docs = [f"def f{i}(x):\n    return x * {i}\n" for i in range(300)]
  SentencePieceTokenizer.train(docs, vocab_size=300).save(str(tmp_path / "tok"))
  (tmp_path / "tok" / "tokenizer.model").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="tokenizer.model is not a valid sentencepiece model"):
    load_tokenizer(str(tmp_path / "tok"))
  text = tmp_path / "c.txt"
  text.write_text("".join(docs) * 3)
  config = build_config(None, [("data.data", str(text)), ("data.cache_dir", str(tmp_path)),
                               ("data.sp_vocab_size", "300")]).data
  first = get_tokenizer(config, load_corpus(config))
  entry = next((tmp_path / "tokenizers").iterdir())
  (entry / "tokenizer.model").write_bytes(b"garbage")
  again = get_tokenizer(config, load_corpus(config))
  assert again.fingerprint == first.fingerprint and "training it again" in caplog.text


def test_decoding_retries_when_its_step_is_deleted_under_it(tmp_path, straight_run):
  """A trainer with keep=1 deletes the step a reader chose: the reader lists again."""
  run = tmp_path / "run"
  shutil.copytree(straight_run, run)
  calls = []

  def restore_one(manager, step):
    calls.append(step)
    if len(calls) == 1:  # the trainer removes step 8 while we read it
      shutil.rmtree(run / store.CHECKPOINT_DIR / str(step))
      raise FileNotFoundError(f"step {step} vanished")
    return step

  result, step = store.restore_newest_intact(str(run), restore_one)
  assert calls == [8, 4] and result == step == 4
