r"""Sentence embeddings from an encoder run, and cosine nearest-neighbour search.

  python -m infer.embed --workdir=runs/bert --input=docs.txt --out=vectors.npy
  python -m infer.embed --workdir=runs/bert --input=docs.txt --query="parse a URL" --top_k=5

  emb = Embedder("runs/bert"); vectors_ND = emb.embed(["some text", ...])
  scores_QK, index_QK = nearest(emb.embed(queries), vectors_ND, k=5)

--input: one document per line (blank lines skipped; a .jsonl file takes each row's
"text"). A text is encoded as in classification, [bos] text [eos] cut to the model's
max_len, and its vector is the pooled final hidden state (mean over its tokens by default,
or the first token: --pooling=first; a classifier run's own pooling otherwise), L2
normalised, so cosine similarity is a dot product. vectors.npy is float32 [N, D] in input
order.

Encoder runs (model.arch=encoder: masked-LM or classifier) are what this is for. A
decoder run is refused unless --allow_decoder: its states only see the past, so the mean
of them is a weaker embedding; with the flag it is pooled the same way (causal mask).
"""

import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from infer.decode import bucket_length
from model import sharding, store
from model.attention import Mask
from model.mesh import MeshConfig
from model.pooling_head import POOLINGS, Classifier, pool
from model.tokenizer import load_tokenizer
from model.transformer import Transformer

_BATCH = 32


def _abstract(module, mesh):
  with sharding.use_mesh(mesh):
    boxed = jax.eval_shape(lambda rng: module.init(rng, jnp.zeros((1, 8), jnp.int32))["params"],
                           jax.random.key(0))
  shardings = sharding.tree_shardings(boxed, mesh)
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


class Embedder:
  """Loads an encoder run's parameters (never optimizer state) and embeds texts."""

  def __init__(self, workdir: str, pooling: str | None = None, allow_decoder: bool = False,
               mesh_config: MeshConfig | None = None):
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"run directory {workdir!r} does not exist; pass the --workdir "
                              "of an encoder run (python -m train.main "
                              "--config=experiments/encoder.py)")
    run = store.read_run_config(workdir)
    config = run.model_config()
    if config.arch == "encoder_decoder":
      raise ValueError(f"{workdir} is an encoder-decoder run; infer.embed embeds with "
                       "encoder-only runs (experiments/encoder.py)")
    if config.arch != "encoder" and not allow_decoder:
      raise ValueError(f"{workdir} is a decoder-only run (model.arch={config.arch!r}): its "
                       "states see only earlier tokens. Embed with an encoder run "
                       "(python -m train.main --config=experiments/encoder.py), or pass "
                       "--allow_decoder to mean-pool this decoder's states anyway")
    if run.head not in ("lm", "classify"):
      raise ValueError(f"{workdir} has a {run.head!r} head; embed with an encoder run")
    classify = run.section("classify") if run.head == "classify" else {}
    self.pooling = pooling or classify.get("pooling", "mean")
    if self.pooling not in POOLINGS:
      raise ValueError(f"--pooling={self.pooling!r} is not one of {POOLINGS}")
    self.config, self.workdir = config, workdir
    self.causal = config.arch != "encoder"
    self.mesh = sharding.make_mesh((mesh_config or MeshConfig()).as_dict())
    self.tokenizer = load_tokenizer(os.path.join(workdir, store.TOKENIZER_DIR))
    peft = run.peft_config()
    if peft.method != "full":
      raise ValueError(f"{workdir} holds a {peft.method} run; export it first "
                       "(python -m infer.export --merge_lora ...)")
    module = (Classifier(config, peft, int(classify.get("n_labels") or 1),
                         classify.get("pooling", "mean"))
              if run.head == "classify" else Transformer(config, peft))
    params, self.step, _ = store.restore_params(workdir, _abstract(module, self.mesh),
                                                version=run.version)
    self.params = {k: v for k, v in params.items() if k != "classify_head"}
    self.model = Transformer(config, peft)
    self._apply = jax.jit(self._embed_batch)
    logging.info("embedding with %s step %d (%s pooling, d=%d)", workdir, self.step,
                 self.pooling, config.d_model)

  def _embed_batch(self, params, tokens_BL, segment_ids_BL):
    mask = Mask.packed(segment_ids_BL) if self.causal else Mask.bidirectional(segment_ids_BL)
    _, _, hidden_BLD = self.model.apply({"params": params}, tokens_BL, mask=mask,
                                        return_hidden=True)
    v_BD = pool(hidden_BLD, segment_ids_BL > 0, self.pooling)
    return v_BD / jnp.maximum(jnp.linalg.norm(v_BD, axis=-1, keepdims=True), 1e-12)

  def encode(self, text: str) -> list[int]:
    t = self.tokenizer
    return ([t.bos_id] + t.encode(text) + [t.eos_id])[:self.config.max_len]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [N, D] unit vectors, in the order of `texts`."""
    if not texts:
      return np.zeros((0, self.config.d_model), np.float32)
    ids = [self.encode(t) for t in texts]
    out = np.zeros((len(texts), self.config.d_model), np.float32)
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a bucket
    with sharding.use_mesh(self.mesh):
      for start in range(0, len(order), _BATCH):
        rows = order[start:start + _BATCH]
        length = bucket_length(max(len(ids[r]) for r in rows), self.config.max_len)
        tokens_BL = np.full((_BATCH, length), self.tokenizer.pad_id, np.int32)
        segment_ids_BL = np.zeros((_BATCH, length), np.int32)
        segment_ids_BL[len(rows):, 0] = 1  # filler rows: one token, never read
        for i, r in enumerate(rows):
          tokens_BL[i, :len(ids[r])] = ids[r]
          segment_ids_BL[i, :len(ids[r])] = 1
        v_BD = self._apply(self.params, jnp.asarray(tokens_BL), jnp.asarray(segment_ids_BL))
        out[rows] = np.asarray(v_BD)[:len(rows)]
    return out


def nearest(queries_QD: np.ndarray, docs_ND: np.ndarray, k: int):
  """(scores_QK, index_QK): the k documents of highest cosine similarity, best first."""
  if k < 1:
    raise ValueError(f"top_k must be >= 1, got {k}")
  q = queries_QD / np.maximum(np.linalg.norm(queries_QD, axis=-1, keepdims=True), 1e-12)
  d = docs_ND / np.maximum(np.linalg.norm(docs_ND, axis=-1, keepdims=True), 1e-12)
  sims_QN = q @ d.T
  k = min(k, docs_ND.shape[0])
  index_QK = np.argsort(-sims_QN, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(sims_QN, index_QK, axis=1), index_QK


def read_documents(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input={path}: no such file; pass a text file with one "
                            "document per line (or a .jsonl of {\"text\": ...})")
  docs = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"line {line_no} of {path}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
          raise ValueError(f"line {line_no} of {path}: expected {{\"text\": \"...\"}}")
        docs.append(obj["text"])
      else:
        docs.append(line.rstrip("\n"))
  if not docs:
    raise ValueError(f"--input={path} has no documents (all lines blank)")
  return docs


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the API adds no flags."""
  flags.DEFINE_string("workdir", None, "Encoder run directory (latest checkpoint is used).")
  flags.DEFINE_string("input", None, "Documents: one per line, or a .jsonl with 'text'.")
  flags.DEFINE_string("out", None, "Write the document vectors here (.npy, float32 [N, D]).")
  flags.DEFINE_multi_string("query", [], "Query text(s): print the --top_k nearest documents.")
  flags.DEFINE_integer("top_k", 5, "Neighbours printed per query.")
  flags.DEFINE_enum("pooling", None, list(POOLINGS), "Pooling (default: mean, or a classifier "
                    "run's own).")
  flags.DEFINE_bool("allow_decoder", False, "Mean-pool a decoder-only run's states anyway.")
  flags.DEFINE_bool("json", False, "Print search results as JSON lines.")


def _main(argv):
  del argv
  from infer import cli  # pylint: disable=g-import-not-at-top

  def body():
    if not FLAGS.workdir or not FLAGS.input:
      raise ValueError("give --workdir=ENCODER_RUN and --input=DOCS.txt")
    if not FLAGS.out and not FLAGS.query:
      raise ValueError("nothing to do: give --out=vectors.npy and/or --query=TEXT")
    docs = read_documents(FLAGS.input)
    embedder = Embedder(FLAGS.workdir, FLAGS.pooling, FLAGS.allow_decoder)
    docs_ND = embedder.embed(docs)
    if FLAGS.out:
      from model.files import save_npy_atomic  # pylint: disable=g-import-not-at-top
      save_npy_atomic(FLAGS.out, docs_ND)
      logging.info("wrote %d vectors of dim %d to %s", *docs_ND.shape, FLAGS.out)
    if FLAGS.query:
      scores_QK, index_QK = nearest(embedder.embed(FLAGS.query), docs_ND, FLAGS.top_k)
      for query, scores, index in zip(FLAGS.query, scores_QK, index_QK):
        hits = [{"rank": r + 1, "score": float(s), "index": int(i), "text": docs[i]}
                for r, (s, i) in enumerate(zip(scores, index))]
        if FLAGS.json:
          print(json.dumps({"query": query, "hits": hits}))
        else:
          print(f"query: {query}")
          for h in hits:
            print(f"  {h['rank']}. {h['score']:.4f}  [{h['index']}] {h['text']}")

  cli.run_cli("embed", body)


def main():
  _define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
