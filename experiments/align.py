r"""Alignment methods compared from one SFT model: reward model, DPO, GRPO, PPO, best-of-N.

  python -m experiments.align --preset=cpu --workdir=runs/align

1. pretrains the quickstart model and fine-tunes it with SFT (or takes --sft=RUN_DIR);
2. trains a reward model, then DPO, GRPO (task reward) and PPO (reward-model reward) from
   the SFT model, each for the preset's steps;
3. measures every policy (SFT included) on held-out task prompts: exact match (greedy),
   the true verifiable reward and the reward model's score of sampled replies, and the KL
   to the SFT reference (sum over reply tokens of log pi - log pi_ref on the samples);
4. draws 16 samples per held-out prompt from the SFT model and, for N in 1, 2, 4, 8, 16,
   compares the true reward of the reply the reward model picks with the oracle best;
5. writes WORKDIR/align.md and align.json. Finished runs are read back, not retrained.
"""

import json
import os
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "smoke"], "cpu: tens of minutes on 2 cores; "
                  "smoke: tests.")
flags.DEFINE_string("workdir", None, "Experiment directory (resumed if it exists).")
flags.DEFINE_string("sft", "", "An SFT run directory to start from (default: train one).")

PRESETS = {
    "cpu": dict(base=("experiments/quickstart.py", []), suffix="",
                sft_steps=600, steps=dict(rm=200, dpo=100, grpo=40, ppo=40), n_prompts=60),
    "smoke": dict(base=("experiments/quickstart.py:tiny", [("model.max_len", "96")]),
                  suffix=":tiny", sft_steps=4, steps=dict(rm=2, dpo=2, grpo=2, ppo=2),
                  n_prompts=4),
}
BEST_OF = (1, 2, 4, 8, 16)


def _train(config_file: str, workdir: str, overrides) -> dict:
  from train.config import build_config  # pylint: disable=g-import-not-at-top
  from train.loop import train  # pylint: disable=g-import-not-at-top
  return train(build_config(config_file, list(overrides)), workdir)


def _policy_eval(run_dir, sft_dir, rows, scorer, max_new_tokens: int) -> dict:
  """Exact match (greedy), true reward / RM score / KL to SFT of one sampled reply each."""
  from infer import sampling  # pylint: disable=g-import-not-at-top
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.eval import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model.chat import encode_prompt, prompt_messages  # pylint: disable=g-import-not-at-top
  from train import task_eval  # pylint: disable=g-import-not-at-top
  policy, ref = load_model(run_dir), load_model(sft_dir)
  template = policy.chat_template
  decoder = Decoder(policy.model_config, policy.mesh, policy.peft, policy.quant)
  ref_decoder = Decoder(ref.model_config, ref.mesh, ref.peft, ref.quant)
  exact = task_eval.evaluate_tasks(decoder, policy.params, policy.tokenizer, template, rows,
                                   max_new_tokens)
  prompts = [encode_prompt(policy.tokenizer, template, prompt_messages(r["prompt"]))
             for r in rows]
  out = decoder.generate(policy.params, prompts, max_new_tokens,
                         sampling.make_sampling_params(len(prompts), "random"), seed=1,
                         eos_id=policy.tokenizer.eos_id)
  ref_logps = ref_decoder.score(ref.params, prompts, [t or [0] for t in out.tokens])
  kl = [float(np.sum(lp) - np.sum(rl[:len(lp)])) for lp, rl in zip(out.logprobs, ref_logps)]
  replies = [template.cut_reply(policy.tokenizer.decode(
      [t for t in toks if t != policy.tokenizer.eos_id])) for toks in out.tokens]
  true = [tasks_lib.score(r["task"], reply, r["answer"]) for r, reply in zip(rows, replies)]
  rm = scorer.score([r["prompt"] for r in rows], replies)
  return dict(exact_match=exact["exact_match"], true_reward=float(np.mean(true)),
              rm_score=float(np.mean(rm)), kl_to_sft=float(np.mean(kl)))


def _best_of_n(sft_dir, rows, scorer, max_new_tokens: int) -> list[dict]:
  """16 samples per prompt; for each N the RM's pick vs the oracle pick among the first N."""
  from infer import sampling  # pylint: disable=g-import-not-at-top
  from infer.decode import Decoder  # pylint: disable=g-import-not-at-top
  from infer.eval import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from infer.loading import load_model  # pylint: disable=g-import-not-at-top
  from model.chat import encode_prompt, prompt_messages  # pylint: disable=g-import-not-at-top
  sft = load_model(sft_dir)
  template, n_max = sft.chat_template, max(BEST_OF)
  decoder = Decoder(sft.model_config, sft.mesh, sft.peft, sft.quant)
  prompts = [encode_prompt(sft.tokenizer, template, prompt_messages(r["prompt"])) for r in rows]
  repeated = [p for p in prompts for _ in range(n_max)]
  out = decoder.generate(sft.params, repeated, max_new_tokens,
                         sampling.make_sampling_params(len(repeated), "random"), seed=2,
                         eos_id=sft.tokenizer.eos_id)
  replies = [template.cut_reply(sft.tokenizer.decode(
      [t for t in toks if t != sft.tokenizer.eos_id])) for toks in out.tokens]
  rm = np.asarray(scorer.score([r["prompt"] for r in rows for _ in range(n_max)], replies))
  true = np.asarray([tasks_lib.score(r["task"], replies[i * n_max + j], r["answer"])
                     for i, r in enumerate(rows) for j in range(n_max)])
  rm, true = rm.reshape(len(rows), n_max), true.reshape(len(rows), n_max)
  curve = []
  for n in BEST_OF:
    pick = np.argmax(rm[:, :n], axis=1)
    curve.append(dict(n=n, rm_pick_true_reward=float(true[np.arange(len(rows)), pick].mean()),
                      oracle_true_reward=float(true[:, :n].max(axis=1).mean()),
                      rm_pick_score=float(rm[np.arange(len(rows)), pick].mean())))
  return curve


def run_experiment(preset_name: str, workdir: str, sft_dir: str = "") -> dict:
  from infer.eval import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from infer.reward import RewardScorer  # pylint: disable=g-import-not-at-top
  preset, start = PRESETS[preset_name], time.perf_counter()
  suffix, steps = preset["suffix"], preset["steps"]
  os.makedirs(workdir, exist_ok=True)
  path = lambda name: os.path.join(workdir, name)
  if not sft_dir:
    _train(preset["base"][0], path("base"), preset["base"][1])
    sft_dir = path("sft")
    _train(f"experiments/sft.py{suffix}", sft_dir,
           [("train.init_from", path("base")), ("train.steps", str(preset["sft_steps"]))])
  common = [("train.init_from", sft_dir), ("train.task_eval_examples", "0")]
  rm = _train(f"experiments/reward.py{suffix}", path("rm"),
              common + [("train.steps", str(steps["rm"]))])
  for name, extra in (("dpo", []), ("grpo", [("rl.reward", "task")]),
                      ("ppo", [("rl.reward_model", path("rm"))])):
    _train(f"experiments/{name}.py{suffix}", path(name),
           common + [("train.steps", str(steps[name]))] + extra)
  rows = tasks_lib.mixture("heldout", max(1, preset["n_prompts"] // 6), 0,
                           ("arithmetic", "reverse", "case", "count", "units", "sort"))
  scorer = RewardScorer(path("rm"))
  policies = {"sft": sft_dir, "dpo": path("dpo"), "grpo": path("grpo"), "ppo": path("ppo")}
  table = {name: _policy_eval(d, sft_dir, rows, scorer, 12) for name, d in policies.items()}
  curve = _best_of_n(sft_dir, rows, scorer, 12)
  result = dict(preset=preset_name, sft=sft_dir, steps=steps, n_prompts=len(rows),
                rm_heldout_accuracy=rm.get("val_reward_accuracy"), policies=table,
                best_of_n=curve, wall_s=time.perf_counter() - start)
  _write(result, workdir)
  return result


def _write(result: dict, workdir: str) -> None:
  lines = [f"# Alignment from one SFT model ({result['preset']} preset)", "",
           f"Reward model held-out pairwise accuracy: {result['rm_heldout_accuracy']:.3f}; "
           f"{result['n_prompts']} held-out task prompts; steps {result['steps']}.", "",
           "| policy | exact match (greedy) | true reward (sampled) | RM score | KL to SFT |",
           "|---|---|---|---|---|"]
  for name, m in result["policies"].items():
    lines.append(f"| {name} | {m['exact_match']:.3f} | {m['true_reward']:.3f} | "
                 f"{m['rm_score']:.3f} | {m['kl_to_sft']:.3f} |")
  lines += ["", "Best-of-N on the SFT model: true reward of the reply the reward model picks "
            "vs the best of the N (oracle).", "",
            "| N | RM pick: true reward | oracle: true reward | RM pick: RM score |",
            "|---|---|---|---|"]
  for row in result["best_of_n"]:
    lines.append(f"| {row['n']} | {row['rm_pick_true_reward']:.3f} | "
                 f"{row['oracle_true_reward']:.3f} | {row['rm_pick_score']:.3f} |")
  with open(os.path.join(workdir, "align.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "align.json"), "w") as f:
    json.dump(result, f, indent=2)
  logging.info("wrote %s", os.path.join(workdir, "align.md"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from infer import cli  # pylint: disable=g-import-not-at-top
  result = cli.run_cli("align", lambda: run_experiment(FLAGS.preset, FLAGS.workdir, FLAGS.sft))
  print(json.dumps({"wall_s": result["wall_s"], "rm_accuracy": result["rm_heldout_accuracy"],
                    "policies": result["policies"], "best_of_n": result["best_of_n"]}))


if __name__ == "__main__":
  app.run(main)
