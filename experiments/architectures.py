r"""Decoder-only vs encoder-decoder on the embedded seq2seq task, at matched training compute.

  python -m experiments.architectures --preset=cpu --workdir=runs/arch

1. Data: the number-words translation set (train/data/number_words.py: English words,
   Portuguese words and digits in every direction); held-out pairs use numbers never seen
   in training in any direction.
2. Trains the encoder-decoder (train/objectives/seq2seq.py) for the preset's steps, then a
   decoder-only model on the same pairs as prompt/response SFT rows (the "qa" template,
   packed) for as many steps as give the same training FLOPs (model/flops.py, counted on
   the padded / packed shapes actually computed).
3. Decodes the held-out sources with greedy and beam search (infer/decode.py, the same
   programs for both) and scores exact match (strict string equality) and corpus BLEU
   (sacrebleu), overall and per direction.
4. Adds the encoder-only rows (classification accuracy, retrieval recall@k) when
   experiments/encoder_report.py provides `encoder_rows(workdir, preset)`.
Writes WORKDIR/architectures.{md,json,png}. Finished runs are resumed, not retrained.
"""

import json
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "smoke"], "cpu: ~10 min on 2 cores; smoke: tests.")
flags.DEFINE_string("workdir", None, "Experiment directory (resumed if it exists).")

PRESETS = {
    "cpu": dict(d_model=128, n_heads=4, encdec_layers=2, decoder_layers=4, encdec_steps=500,
                batch_size=32, learning_rate=2e-3, n_train=12000, n_heldout=240,
                max_number=999, directions="all", num_beams=4, source_len=48, target_len=40,
                decoder_seq_len=96),
    "smoke": dict(d_model=32, n_heads=2, encdec_layers=1, decoder_layers=2, encdec_steps=3,
                  batch_size=8, learning_rate=2e-3, n_train=64, n_heldout=6, max_number=999,
                  directions="en->digits,digits->pt", num_beams=2, source_len=48,
                  target_len=40, decoder_seq_len=96),
}
TEMPLATE = "qa"


def _base_config(p: dict, arch: str, steps: int, data_path: str):
  from model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from train.config import Config, DataConfig, MeshConfig, TrainConfig
  train = TrainConfig(objective="seq2seq" if arch == "encoder_decoder" else "sft", steps=steps,
                      batch_size=p["batch_size"], learning_rate=p["learning_rate"],
                      warmup_steps=max(1, steps // 10), lr_floor=0.05, weight_decay=0.0,
                      log_every=max(1, steps // 10), eval_every=0, eval_batches=2,
                      checkpoint_every=max(1, steps // 2), samples=0)
  if arch == "encoder_decoder":
    model = ModelConfig(arch=arch, vocab_size=264, d_model=p["d_model"],
                        n_layers=p["encdec_layers"], n_heads=p["n_heads"],
                        max_len=max(p["source_len"], p["target_len"]))
    data = DataConfig(kind="seq2seq", data=data_path, tokenizer="byte",
                      seq_len=p["target_len"], source_len=p["source_len"])
  else:
    model = ModelConfig(vocab_size=264, d_model=p["d_model"], n_layers=p["decoder_layers"],
                        n_heads=p["n_heads"], max_len=p["decoder_seq_len"])
    data = DataConfig(kind="sft", data=data_path, tokenizer="byte", chat_template=TEMPLATE,
                      pack=True, seq_len=p["decoder_seq_len"])
  return Config(model=model, data=data, train=train, mesh=MeshConfig(data=-1))


def _write_data(p: dict, workdir: str) -> tuple[str, str, list]:
  """The same train rows as seq2seq and SFT jsonl files; returns their paths and held-out."""
  from train.data.seq2seq import embedded_rows  # pylint: disable=g-import-not-at-top
  train_rows, val_rows, heldout = embedded_rows(p["n_train"], p["n_heldout"], 0,
                                                p["directions"], p["max_number"])
  os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
  paths = (os.path.join(workdir, "data", "seq2seq.jsonl"),
           os.path.join(workdir, "data", "sft.jsonl"))
  with open(paths[0], "w") as f:
    for r in train_rows + val_rows:
      f.write(json.dumps({"source": r["source"], "target": r["target"]}) + "\n")
  with open(paths[1], "w") as f:
    for r in train_rows + val_rows:
      f.write(json.dumps({"prompt": r["source"], "response": r["target"]}) + "\n")
  return paths[0], paths[1], heldout


def _flops_per_row(config) -> tuple[float, float]:
  """(training FLOPs per batch row, examples per row), on the shapes actually computed.

  An encoder-decoder row is one padded example; a decoder-only row is a packed sequence of
  seq_len tokens holding several examples.
  """
  from model import flops  # pylint: disable=g-import-not-at-top
  if config.model.arch == "encoder_decoder":
    return 3.0 * flops.encoder_decoder_forward_flops(
        config.model, config.data.source_len, config.data.seq_len)["total"], 1.0
  from model.tokenizer import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from train.data.sft import build_sft_datasets  # pylint: disable=g-import-not-at-top
  _, _, _, info = build_sft_datasets(ByteTokenizer(), TEMPLATE, config.data.seq_len,
                                     data_path=config.data.data, pack=True)
  per_row = flops.flops_per_token(config.model, config.data.seq_len) * config.data.seq_len
  return float(per_row), info["n_train_examples"] / info["train_rows"]


def _prompts(loaded, arch: str, sources: list[str]) -> list[list[int]]:
  if arch == "encoder_decoder":
    return [loaded.tokenizer.encode(s) for s in sources]
  from model.chat import encode_prompt, get_template, prompt_messages
  return [encode_prompt(loaded.tokenizer, get_template(TEMPLATE), prompt_messages(s))
          for s in sources]


def _text(tokenizer, tokens: list[int], arch: str) -> str:
  if tokens and tokens[-1] == tokenizer.eos_id:
    tokens = tokens[:-1]
  text = tokenizer.decode(tokens)
  if arch != "encoder_decoder":  # the reply ends at the template's turn end
    text = text.split("\n", 1)[0]
  return text.strip()


def evaluate(run_dir: str, arch: str, heldout: list[dict], num_beams: int,
             max_new_tokens: int) -> dict:
  """Greedy and beam exact match and BLEU on the held-out pairs (one batch each)."""
  from infer import sampling  # pylint: disable=g-import-not-at-top
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.eval.metrics import bleu_metric  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  loaded = load_model(run_dir)
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  prompts = _prompts(loaded, arch, [r["source"] for r in heldout])
  refs = [r["target"] for r in heldout]
  eos = loaded.tokenizer.eos_id
  out = {}
  for method in ("greedy", "beam"):
    start = time.perf_counter()
    if method == "greedy":
      gen = decoder.generate(loaded.params, prompts, max_new_tokens,
                             sampling.make_sampling_params(len(prompts), "greedy"), eos_id=eos)
    else:
      gen = decoder.beam_search(loaded.params, prompts, max_new_tokens, num_beams, 1.0, eos)
    preds = [_text(loaded.tokenizer, t, arch) for t in gen.tokens]
    exact = [float(p == r) for p, r in zip(preds, refs)]
    per_task = {}
    for row, e in zip(heldout, exact):
      per_task.setdefault(row["task"], []).append(e)
    out[method] = dict(
        exact_match=sum(exact) / len(exact),
        bleu=float(bleu_metric().corpus_score(preds, [refs]).score),
        per_task={k: sum(v) / len(v) for k, v in sorted(per_task.items())},
        seconds=time.perf_counter() - start,
        examples=[{"source": r["source"], "target": r["target"], "prediction": p}
                  for r, p in list(zip(heldout, preds))[:6]])
  return out


def _train_seconds(run_dir: str, summary: dict, seconds: float) -> float:
  """This call's training time, kept in the run directory so a rerun reports it too."""
  path = os.path.join(run_dir, "train_seconds.json")
  if summary["start_step"] == 0 and summary["step"] > 0:
    with open(path, "w") as f:
      json.dump({"seconds": seconds}, f)
  elif os.path.exists(path):
    with open(path) as f:
      return json.load(f)["seconds"]
  return seconds


def _encoder_rows(workdir: str, preset: str):
  """Encoder-only figures from experiments/encoder_report.py, when that file exists."""
  try:
    from experiments import encoder_report  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("experiments/encoder_report.py not found: encoder-only rows skipped")
    return None
  return encoder_report.encoder_rows(os.path.join(workdir, "encoder"),
                                     {"smoke": "tiny"}.get(preset, preset))


def run_experiment(preset_name: str, workdir: str) -> dict:
  from model import flops  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  p = PRESETS[preset_name]
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  s2s_path, sft_path, heldout = _write_data(p, workdir)
  encdec = _base_config(p, "encoder_decoder", p["encdec_steps"], s2s_path)
  budget = p["encdec_steps"] * p["batch_size"] * _flops_per_row(encdec)[0]
  decoder = _base_config(p, "decoder", 1, sft_path)
  decoder_steps = max(1, round(budget / (p["batch_size"] * _flops_per_row(decoder)[0])))
  decoder = _base_config(p, "decoder", decoder_steps, sft_path)
  runs = []
  for arch, config in (("encoder_decoder", encdec), ("decoder", decoder)):
    run_start = time.perf_counter()
    summary = train(config, os.path.join(workdir, arch))
    runs.append((arch, config, summary, _train_seconds(
        os.path.join(workdir, arch), summary, time.perf_counter() - run_start)))
  rows = []
  for arch, config, summary, train_s in runs:
    per_row, examples_per_row = _flops_per_row(config)
    scores = evaluate(os.path.join(workdir, arch), arch, heldout, p["num_beams"],
                      p["target_len"])
    rows.append(dict(
        arch=arch, steps=summary["step"], params=flops.param_counts(config.model)["total"],
        train_flops_per_example=per_row / examples_per_row,
        train_flops=per_row * summary["step"] * p["batch_size"],
        examples_seen=round(examples_per_row * summary["step"] * p["batch_size"]),
        val_loss=summary.get("val_loss"), train_seconds=train_s, **scores))
    logging.info("%s: greedy exact %.3f bleu %.1f | beam exact %.3f bleu %.1f", arch,
                 scores["greedy"]["exact_match"], scores["greedy"]["bleu"],
                 scores["beam"]["exact_match"], scores["beam"]["bleu"])
  result = dict(preset=preset_name, settings=p, budget_flops=budget, n_heldout=len(heldout),
                architectures=rows, encoder=_encoder_rows(workdir, preset_name),
                wall_s=time.perf_counter() - start)
  from experiments import architectures_report  # pylint: disable=g-import-not-at-top
  architectures_report.write(result, workdir)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from infer import cli  # pylint: disable=g-import-not-at-top
  result = cli.run_cli("architectures", lambda: run_experiment(FLAGS.preset, FLAGS.workdir))
  print(json.dumps({"wall_s": result["wall_s"], **{
      r["arch"]: {m: {"exact_match": r[m]["exact_match"], "bleu": r[m]["bleu"]}
                  for m in ("greedy", "beam")} for r in result["architectures"]}}))


if __name__ == "__main__":
  app.run(main)
