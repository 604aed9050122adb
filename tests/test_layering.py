"""Imports point one way: experiments -> train -> infer -> model (DESIGN.md)."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("model", "infer", "train", "experiments")  # each may import only those before it


def _imported_packages(path: str) -> set[str]:
  tree = ast.parse(open(path).read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module.split(".")[0])
  return names


@pytest.mark.parametrize("layer", LAYERS[:3])
def test_no_file_imports_a_higher_layer(layer):
  forbidden = set(LAYERS[LAYERS.index(layer) + 1:])
  offenders = []
  for directory, _, files in os.walk(os.path.join(ROOT, layer)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        bad = _imported_packages(path) & forbidden
        if bad:
          offenders.append(f"{os.path.relpath(path, ROOT)} imports {sorted(bad)}")
  assert not offenders, "\n".join(offenders)


def _infer_modules() -> list[list[str]]:
  """Groups of infer modules to import together (each CLI defines flags: one per process)."""
  libraries, clis = [], []
  for directory, _, files in os.walk(os.path.join(ROOT, "infer")):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").replace(".__init__", "")
        (clis if "flags.DEFINE" in open(path).read() else libraries).append(module)
  return [libraries] + [[m] for m in clis]


@pytest.mark.parametrize("modules", _infer_modules(), ids=lambda m: m[-1])
def test_infer_modules_load_no_train_module(modules):
  """The same rule at run time: importing infer modules pulls in nothing from train/."""
  code = ("import sys, importlib\n"
          f"for name in {modules!r}:\n"
          "  importlib.import_module(name)\n"
          "bad = sorted(m for m in sys.modules if m == 'train' or m.startswith('train.'))\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_the_checker_can_fail(tmp_path):
  bad = tmp_path / "x.py"
  bad.write_text("from train.step import Trainer\nimport experiments.quickstart\n")
  assert _imported_packages(str(bad)) == {"train", "experiments"}
