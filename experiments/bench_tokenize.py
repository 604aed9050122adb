r"""Tokenization throughput and memory of the sharded, parallel token cache on a large corpus.

  python -m experiments.bench_tokenize --out_dir=/tmp/bench_tokenize --corpus_mb=1100 \
      --workers=2 [--small_mb=128] [--vocab_size=2048]

1. Generates a jsonl corpus of --corpus_mb MB (the embedded stdlib corpus, each copy of each
   file prefixed by a distinct comment so no two documents are equal) and a --small_mb slice
   of it, and trains a sentencepiece tokenizer on the embedded corpus (once; both kept in
   --out_dir for reruns).
2. Baseline, in its own process: one process, sentencepiece with one thread, encoding the
   first --baseline_mb MB through the same chunk encoder the pipeline uses (ids + eos into a
   numpy array): tokens/s per core.
3. Pipeline, each in its own fresh process: `build_token_files` on the small and the full
   corpus with --workers worker processes (fingerprint pass, split, parallel encode, shard
   writes and checksums all counted), tokens/s and peak resident memory of the parent and
   of the largest worker.
Prints a table and, last, one JSON object. Scaling = pipeline tokens/s / (baseline tokens/s
x workers), taken in the same run; memory independence = full-corpus peak / small-corpus
peak. On a 2-core machine the parent (reading, json, pickling, writing) shares the cores
with the workers, so scaling below 1 there includes its cost.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "/tmp/bench_tokenize", "Corpus, tokenizer and caches.")
flags.DEFINE_integer("corpus_mb", 1100, "Size of the generated corpus (MB).")
flags.DEFINE_integer("small_mb", 128, "Size of the small slice (memory comparison).")
flags.DEFINE_integer("baseline_mb", 48, "Text the single-process baseline encodes (MB).")
flags.DEFINE_integer("workers", 2, "Worker processes of the pipeline.")
flags.DEFINE_integer("vocab_size", 2048, "Sentencepiece vocabulary.")
flags.DEFINE_enum("stage", "all", ["all", "baseline", "pipeline"], "Internal: one stage.")
flags.DEFINE_string("corpus", "", "Internal: the corpus of a pipeline stage.")


def _peak_mb(who) -> float:
  return resource.getrusage(who).ru_maxrss / 1024


def generate_corpus(path: str, megabytes: int) -> int:
  """Writes the jsonl corpus (whole stdlib copies until the size is reached); returns bytes."""
  from train import corpus as corpus_lib
  docs = list(corpus_lib.load_stdlib_corpus().documents)
  target, written, copy = megabytes << 20, 0, 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    while written < target:
      for i, doc in enumerate(docs):
        line = json.dumps({"text": f"# copy {copy} of file {i}\n{doc}"}) + "\n"
        f.write(line)
        written += len(line)
        if written >= target:
          break
      copy += 1
  os.replace(tmp, path)
  return written


def slice_corpus(src: str, dst: str, megabytes: int) -> None:
  with open(src) as f, open(dst + ".tmp", "w") as g:
    size = 0
    for line in f:
      g.write(line)
      size += len(line)
      if size >= megabytes << 20:
        break
  os.replace(dst + ".tmp", dst)


def tokenizer_dir() -> str:
  return os.path.join(FLAGS.out_dir, f"sp{FLAGS.vocab_size}")


def prepare() -> dict:
  from model.tokenizer import SentencePieceTokenizer
  from train import corpus as corpus_lib
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  big = os.path.join(FLAGS.out_dir, f"corpus_{FLAGS.corpus_mb}mb.jsonl")
  small = os.path.join(FLAGS.out_dir, f"corpus_{FLAGS.small_mb}mb.jsonl")
  if not os.path.exists(big):
    start = time.perf_counter()
    generate_corpus(big, FLAGS.corpus_mb)
    print(f"generated {big} in {time.perf_counter() - start:.0f} s", flush=True)
  if not os.path.exists(small):
    slice_corpus(big, small, FLAGS.small_mb)
  if not os.path.exists(os.path.join(tokenizer_dir(), "tokenizer.json")):
    docs = list(corpus_lib.load_stdlib_corpus().documents)
    SentencePieceTokenizer.train(docs, vocab_size=FLAGS.vocab_size).save(tokenizer_dir())
  return dict(big=big, small=small)


def stage_baseline() -> dict:
  from model.tokenizer import load_tokenizer
  from train import token_shards
  tok = load_tokenizer(tokenizer_dir())
  tok.num_threads = 1
  texts, size = [], 0
  with open(os.path.join(FLAGS.out_dir, f"corpus_{FLAGS.small_mb}mb.jsonl")) as f:
    for line in f:
      texts.append(json.loads(line)["text"])
      size += len(texts[-1].encode())
      if size >= FLAGS.baseline_mb << 20:
        break
  chunks = list(token_shards.chunk_documents(texts))
  start = time.perf_counter()
  n_tokens = sum(token_shards.encode_chunk(tok, c).size for c in chunks)
  seconds = time.perf_counter() - start
  return dict(tokens=int(n_tokens), bytes=size, seconds=seconds, tokens_per_s=n_tokens / seconds,
              mb_per_s=size / 1e6 / seconds)


def stage_pipeline() -> dict:
  from model.tokenizer import load_tokenizer
  from train import corpus as corpus_lib
  from train import dataset as dataset_lib
  tok = load_tokenizer(tokenizer_dir())
  cache = os.path.join(FLAGS.out_dir, "cache", os.path.basename(FLAGS.corpus))
  if os.path.exists(cache):
    import shutil
    shutil.rmtree(cache)
  start = time.perf_counter()
  corpus = corpus_lib.load_user_corpus(FLAGS.corpus)
  fingerprint_s = time.perf_counter() - start
  _, meta = dataset_lib.build_token_files(corpus, tok, 0.005, cache, workers=FLAGS.workers)
  seconds = time.perf_counter() - start
  n_tokens = meta["n_train_tokens"] + meta["n_val_tokens"]
  return dict(bytes=corpus.n_bytes, tokens=n_tokens, seconds=seconds, fingerprint_s=fingerprint_s,
              tokenize_s=meta["tokenize_seconds"], tokens_per_s=n_tokens / seconds,
              tokenize_tokens_per_s=n_tokens / meta["tokenize_seconds"],
              shards=len(meta["files"]), parent_peak_mb=_peak_mb(resource.RUSAGE_SELF),
              worker_peak_mb=_peak_mb(resource.RUSAGE_CHILDREN))


def _run_stage(stage: str, corpus: str = "") -> dict:
  cmd = [sys.executable, "-m", "experiments.bench_tokenize", f"--stage={stage}",
         f"--out_dir={FLAGS.out_dir}", f"--small_mb={FLAGS.small_mb}",
         f"--baseline_mb={FLAGS.baseline_mb}", f"--workers={FLAGS.workers}",
         f"--vocab_size={FLAGS.vocab_size}", f"--corpus={corpus}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"stage {stage} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.workers < 1 or FLAGS.corpus_mb < 1 or FLAGS.small_mb < 1 or FLAGS.baseline_mb < 1:
    raise app.UsageError("--workers, --corpus_mb, --small_mb and --baseline_mb must be >= 1")
  if FLAGS.stage == "baseline":
    print(json.dumps(stage_baseline()))
    return
  if FLAGS.stage == "pipeline":
    print(json.dumps(stage_pipeline()))
    return
  paths = prepare()
  baseline = _run_stage("baseline")
  small = _run_stage("pipeline", paths["small"])
  full = _run_stage("pipeline", paths["big"])
  linear = baseline["tokens_per_s"] * FLAGS.workers
  result = dict(cpu_count=os.cpu_count(), workers=FLAGS.workers, baseline=baseline, small=small,
                full=full, scaling=full["tokens_per_s"] / linear,
                scaling_encode_only=full["tokenize_tokens_per_s"] / linear,
                memory_ratio=max(full["parent_peak_mb"], full["worker_peak_mb"]) /
                max(small["parent_peak_mb"], small["worker_peak_mb"]))
  print(f"single process, 1 thread: {baseline['tokens_per_s'] / 1e6:.2f} M tokens/s "
        f"({baseline['mb_per_s']:.1f} MB/s)")
  print("| corpus | MB | tokens | seconds | M tokens/s | vs 1 proc x workers | parent peak MB "
        "| worker peak MB |")
  print("|---|---|---|---|---|---|---|---|")
  for name, r in (("small", small), ("full", full)):
    print(f"| {name} | {r['bytes'] / 1e6:.0f} | {r['tokens'] / 1e6:.0f} M | {r['seconds']:.1f} | "
          f"{r['tokens_per_s'] / 1e6:.2f} | {r['tokens_per_s'] / linear:.2f} | "
          f"{r['parent_peak_mb']:.0f} | {r['worker_peak_mb']:.0f} |")
  print(f"scaling {result['scaling']:.2f} of linear ({result['scaling_encode_only']:.2f} without "
        f"the fingerprint pass); peak memory full/small {result['memory_ratio']:.2f}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
