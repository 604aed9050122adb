"""Writes the fine-tuning comparison: finetune.json, finetune.md and finetune.png."""

import os

from model.files import write_json_atomic


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def markdown(result: dict) -> str:
  tasks = sorted(result["before"]["per_task"])
  lines = [
      f"# Fine-tuning methods on the embedded tasks ({result['preset']} preset)",
      "",
      f"Base: `{result['base']}`; {result['steps']} steps per method; exact match on the "
      f"held-out split (greedy decoding). Wall time {result['wall_s'] / 60:.1f} min.",
      "",
      "| method | trainable | % of params | optimizer state | tokens/s | held-out loss | "
      "exact match | " + " | ".join(tasks) + " |",
      "|---" * (7 + len(tasks)) + "|",
  ]
  before = result["before"]
  lines.append("| base (zero-shot) | 0 | 0 | 0 | - | - | "
               f"{before['exact_match']:.3f} | "
               + " | ".join(f"{before['per_task'].get(t, 0):.2f}" for t in tasks) + " |")
  for row in result["methods"]:
    lines.append(
        f"| {row['method']} | {row['trainable_params']:,} | {row['trainable_percent']:.3f} | "
        f"{_fmt_bytes(row['optimizer_state_bytes'])} | {row['tokens_per_s']:.0f} | "
        f"{row['val_loss']:.3f} | {row['exact_match']:.3f} | "
        + " | ".join(f"{row['per_task'].get(t, 0):.2f}" for t in tasks) + " |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  tasks = sorted(result["before"]["per_task"])
  series = [("base", result["before"]["per_task"])] + [
      (r["method"], r["per_task"]) for r in result["methods"]]
  x = np.arange(len(tasks) + 1)
  width = 0.8 / len(series)
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.2),
                                gridspec_kw={"width_ratios": [3, 1.3]})
  for i, (name, per_task) in enumerate(series):
    values = [per_task.get(t, 0.0) for t in tasks]
    values.append(float(np.mean(values)) if values else 0.0)
    ax.bar(x + (i - len(series) / 2 + 0.5) * width, values, width, label=name, color=f"C{i}")
  ax.set_xticks(x, tasks + ["mean"], rotation=20)
  ax.set_ylabel("held-out exact match")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8, ncol=3)
  ax.set_title("exact match per task, before and after fine-tuning")
  for i, row in enumerate(result["methods"], start=1):  # colours as in the bars
    ax2.scatter(row["trainable_percent"], row["exact_match"], color=f"C{i}")
    ax2.annotate(row["method"], (row["trainable_percent"], row["exact_match"]), fontsize=8)
  ax2.set_xscale("log")
  ax2.set_xlabel("trainable parameters (% of model)")
  ax2.set_ylabel("mean exact match")
  ax2.set_title("quality vs trainable share")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(result: dict, workdir: str) -> None:
  write_json_atomic(os.path.join(workdir, "finetune.json"), result)
  with open(os.path.join(workdir, "finetune.md"), "w") as f:
    f.write(markdown(result))
  plot(result, os.path.join(workdir, "finetune.png"))
  print(markdown(result))
