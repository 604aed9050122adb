"""Writes the architecture comparison: architectures.json, architectures.md, architectures.png."""

import os

from model.files import write_json_atomic


def _encoder_lines(encoder) -> list[str]:
  """The encoder-only figures (experiments/encoder_report.py) as a figure | value table."""
  if not encoder:
    return ["", "Encoder-only rows: not produced (experiments/encoder_report.py absent)."]
  rows = encoder if isinstance(encoder, list) else [encoder]
  lines = ["", "## Encoder-only (experiments/encoder_report.py)", ""]
  for r in rows:
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(r.items())
              if not isinstance(v, (dict, list))]
  return lines


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown(result: dict) -> str:
  s = result["settings"]
  tasks = sorted(result["architectures"][0]["greedy"]["per_task"])
  lines = [
      f"# Decoder-only vs encoder-decoder ({result['preset']} preset)",
      "",
      f"Task: number words (English, Portuguese, digits; directions {s['directions']}; "
      f"numbers 0..{s['max_number']}), {result['n_heldout']} held-out pairs whose numbers "
      f"were never trained on. Training compute matched at {result['budget_flops']:.3g} "
      f"FLOPs (model/flops.py on the shapes run). Beam: {s['num_beams']} beams, length "
      f"penalty 1. Exact match is strict string equality. Wall time "
      f"{result['wall_s'] / 60:.1f} min.",
      "",
      "| architecture | params | train FLOPs / example | steps | examples seen | held-out loss | "
      "exact (greedy) | BLEU (greedy) | exact (beam) | BLEU (beam) |",
      "|---" * 10 + "|",
  ]
  for r in result["architectures"]:
    lines.append(
        f"| {r['arch']} | {r['params']:,} | {r['train_flops_per_example']:.3g} | {r['steps']} "
        f"| {r['examples_seen']:,} | {_fmt(r['val_loss'])} | {r['greedy']['exact_match']:.3f} | "
        f"{r['greedy']['bleu']:.1f} | {r['beam']['exact_match']:.3f} | {r['beam']['bleu']:.1f} |")
  lines += ["", "Exact match per direction (greedy / beam):", "",
            "| architecture | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for r in result["architectures"]:
    lines.append(f"| {r['arch']} | " + " | ".join(
        f"{r['greedy']['per_task'][t]:.2f} / {r['beam']['per_task'][t]:.2f}" for t in tasks)
                 + " |")
  lines += ["", "Examples (greedy):", ""]
  for r in result["architectures"]:
    for ex in r["greedy"]["examples"][:3]:
      lines.append(f"- {r['arch']}: `{ex['source']}` -> `{ex['prediction']}` "
                   f"(reference `{ex['target']}`)")
  lines += _encoder_lines(result.get("encoder"))
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = result["architectures"]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  x = np.arange(len(rows))
  for ax, metric, label in ((axes[0], "exact_match", "exact match"), (axes[1], "bleu", "BLEU")):
    for i, method in enumerate(("greedy", "beam")):
      ax.bar(x + (i - 0.5) * 0.35, [r[method][metric] for r in rows], 0.35, label=method)
    ax.set_xticks(x, [r["arch"] for r in rows])
    ax.set_ylabel(label)
    ax.set_title(f"held-out {label} at matched compute")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(result: dict, workdir: str) -> None:
  write_json_atomic(os.path.join(workdir, "architectures.json"), result)
  with open(os.path.join(workdir, "architectures.md"), "w") as f:
    f.write(markdown(result))
  plot(result, os.path.join(workdir, "architectures.png"))
