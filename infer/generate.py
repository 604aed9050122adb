r"""Decode from a training run's checkpoint.

  python -m infer.generate --workdir=runs/quickstart --prompt="def fibonacci(n):" \
      --max_new_tokens=64 --sampler=top_p --temperature=0.8 --top_p=0.9

Samplers: greedy | random | temperature | top_k | top_p | beam | best_of_n; or
--preset=chat | code | creative. See the README for what each does.
"""

import json

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run directory (latest checkpoint is used).")
flags.DEFINE_string("checkpoint", None, "A specific checkpoint: DIR/checkpoints/STEP.")
flags.DEFINE_string("prompt", None, "Prompt text.")
flags.DEFINE_string("prompts_file", None, "File with one prompt per line (a batch).")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
flags.DEFINE_enum("sampler", "greedy", ["greedy", "random", "temperature", "top_k", "top_p",
                                        "beam", "best_of_n"], "Decoding method.")
flags.DEFINE_enum("preset", None, ["chat", "code", "creative"],
                  "Recommended settings; overrides --sampler/--temperature/--top_k/--top_p.")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", 1.0, "Keep the smallest set reaching probability p (1 = off).")
flags.DEFINE_integer("num_beams", 4, "Beams for --sampler=beam.")
flags.DEFINE_float("length_penalty", 1.0, "Beam score = logprob / length**length_penalty.")
flags.DEFINE_integer("num_samples", 4, "N for --sampler=best_of_n.")
flags.DEFINE_integer("n", None, "Alias of --num_samples.")
flags.DEFINE_string("scorer", None, "best_of_n: a reward-model run directory whose reward "
                    "picks the best sample (default: the policy's mean log-prob).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_multi_string("stop", [], "Stop string(s); the text is cut before them.")
flags.DEFINE_bool("ignore_eos", False, "Keep generating after the end-of-sequence token.")
flags.DEFINE_bool("logprobs", False, "Print per-token log-probabilities.")
flags.DEFINE_string("dtype", None, "Compute dtype override, e.g. bfloat16 on a GPU.")
flags.DEFINE_string("mesh", "", "Mesh for decoding, e.g. 'data=1,tensor=2' (default: all "
                    "devices on data).")
flags.DEFINE_bool("json", False, "Print results as JSON lines.")
flags.DEFINE_bool("raw", False, "Do not wrap prompts in the run's chat template (fine-tuned "
                  "runs record one; pretrained runs have none).")

def read_prompts() -> list[str]:
  if FLAGS.prompts_file:
    with open(FLAGS.prompts_file) as f:
      prompts = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    if not prompts:
      raise ValueError(f"{FLAGS.prompts_file} has no prompts")
    return prompts
  if FLAGS.prompt is None:
    raise ValueError("give --prompt=TEXT or --prompts_file=FILE")
  if not FLAGS.prompt:
    raise ValueError("--prompt is empty; give some text to continue")
  return [FLAGS.prompt.replace("\\n", "\n")]


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
  cut = min((text.find(s) for s in stops if s and s in text), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


def validate_flags() -> None:
  """Numeric options checked at the boundary: a bad value is an error, never a silent
  default (a NaN top-p or a zero sample count used to decode something anyway)."""
  import math  # pylint: disable=g-import-not-at-top
  checks = [
      ("max_new_tokens", FLAGS.max_new_tokens >= 1, "an integer >= 1"),
      ("temperature", math.isfinite(FLAGS.temperature) and FLAGS.temperature >= 0,
       "a finite number >= 0"),
      ("top_k", FLAGS.top_k >= 0, "an integer >= 0 (0 = off)"),
      ("top_p", math.isfinite(FLAGS.top_p) and 0 < FLAGS.top_p <= 1, "a number in (0, 1]"),
      ("num_beams", FLAGS.num_beams >= 1, "an integer >= 1"),
      ("length_penalty", math.isfinite(FLAGS.length_penalty), "a finite number"),
      ("num_samples", FLAGS.num_samples >= 1, "an integer >= 1"),
      ("n", FLAGS.n is None or FLAGS.n >= 1, "an integer >= 1"),
  ]
  for name, ok, want in checks:
    if not ok:
      raise ValueError(f"--{name}={getattr(FLAGS, name)} must be {want}")


def run() -> list[dict]:
  from infer import sampling
  from infer.decode import Decoder
  from infer.loading import load_model
  from model.chat import encode_prompt, prompt_messages
  from model.mesh import parse_mesh

  path = FLAGS.checkpoint or FLAGS.workdir
  if not path:
    raise ValueError("give --workdir=RUN_DIR or --checkpoint=RUN_DIR/checkpoints/STEP")
  validate_flags()
  prompts = read_prompts()
  loaded = load_model(path, mesh_config=parse_mesh(FLAGS.mesh), dtype=FLAGS.dtype)
  tokenizer = loaded.tokenizer
  template = None if FLAGS.raw else loaded.chat_template
  if template:
    prompt_ids = [encode_prompt(tokenizer, template, prompt_messages(p)) for p in prompts]
  else:
    prompt_ids = [tokenizer.encode(p) for p in prompts]
  for text, ids in zip(prompts, prompt_ids):
    if not ids:
      raise ValueError(f"prompt {text!r} encodes to no tokens")
  if template:
    logging.info("prompts wrapped in the run's chat template %r (--raw to skip)", template.name)
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  eos_id = None if FLAGS.ignore_eos else tokenizer.eos_id
  stops = list(FLAGS.stop)
  if template and template.stop_text:
    stops.append(template.stop_text)  # a chat reply ends at the template's turn end

  def stop_fn(row, tokens):
    return bool(stops) and cut_at_stop(tokenizer.decode(tokens), stops)[1]

  sampler = FLAGS.sampler
  if FLAGS.scorer and sampler != "best_of_n":
    raise ValueError("--scorer picks among samples: use it with --sampler=best_of_n --n=N")
  batch = len(prompt_ids)
  if FLAGS.preset:
    params_sampling = sampling.params_from_preset(batch, FLAGS.preset)
    sampler = f"preset:{FLAGS.preset}"
  elif sampler != "beam":
    method = sampler
    truncating = FLAGS.top_k > 0 or FLAGS.top_p < 1.0
    if sampler == "best_of_n" or (sampler == "temperature" and truncating) or (
        sampler in ("top_k", "top_p") and FLAGS.top_k > 0 and FLAGS.top_p < 1.0):
      method = "custom"
    params_sampling = sampling.make_sampling_params(
        batch, method, temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
  if sampler == "beam":
    result = decoder.beam_search(loaded.params, prompt_ids, FLAGS.max_new_tokens,
                                 FLAGS.num_beams, FLAGS.length_penalty, eos_id)
  elif sampler == "best_of_n":
    n = FLAGS.n or FLAGS.num_samples
    scorer = None
    if FLAGS.scorer:
      from infer.reward import RewardScorer
      scorer = RewardScorer(FLAGS.scorer, mesh=loaded.mesh).best_of_n_scorer(tokenizer, template)
    result = decoder.best_of_n(loaded.params, prompt_ids, FLAGS.max_new_tokens,
                               params_sampling, n, FLAGS.seed, eos_id, scorer=scorer)
  else:
    result = decoder.generate(loaded.params, prompt_ids, FLAGS.max_new_tokens, params_sampling,
                              FLAGS.seed, eos_id, stop_fn if stops else None)

  outputs = []
  for i, prompt in enumerate(prompts):
    tokens = result.tokens[i]
    if tokens and eos_id is not None and tokens[-1] == eos_id:
      tokens = tokens[:-1]
    text, stopped = cut_at_stop(tokenizer.decode(tokens), stops)
    record = {"prompt": prompt, "completion": text,
              "finish_reason": "stop" if stopped else result.finish_reasons[i],
              "n_tokens": len(result.tokens[i])}
    if result.scores is not None:
      record["score"] = result.scores[i]
    if FLAGS.logprobs and result.logprobs[i]:
      record["tokens"] = [tokenizer.decode([t]) for t in result.tokens[i]]
      record["logprobs"] = [round(x, 4) for x in result.logprobs[i]]
    outputs.append(record)

  n_generated = sum(len(t) for t in result.tokens)
  if result.decode_steps:
    logging.info("sampler %s | prefill %.3fs (incl. compile on first call) | decode %d steps "
                 "in %.3fs = %.1f tokens/s (batch %d, %.1f steps/s)", sampler,
                 result.prefill_seconds, result.decode_steps, result.decode_seconds,
                 n_generated / max(result.decode_seconds, 1e-9), batch,
                 result.decode_steps / max(result.decode_seconds, 1e-9))
  for record in outputs:
    if FLAGS.json:
      print(json.dumps(record))
    else:
      print("=" * 72)
      print(record["prompt"] + record["completion"])
      print(f"--- [{record['finish_reason']}, {record['n_tokens']} tokens"
            + (f", score {record['score']:.4f}" if "score" in record else "") + "]")
      if "logprobs" in record:
        for piece, logprob in zip(record["tokens"], record["logprobs"]):
          print(f"  {piece!r:>16} {logprob:8.4f}")
  return outputs


def _main(argv):
  del argv
  from infer import cli
  cli.run_cli("generate", run)


def main():
  app.run(_main)


if __name__ == "__main__":
  main()

