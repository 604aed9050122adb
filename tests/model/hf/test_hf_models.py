"""Each architecture: a tiny random transformers model -> import -> same logits and greedy
continuations -> export -> transformers reloads it with the same logits; re-importing the
export gives back our checkpoint bit for bit."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402

from infer import sampling  # noqa: E402
from infer.decode import Decoder  # noqa: E402
from infer.hf_export import export_hf  # noqa: E402
from infer.hf_import import import_hf  # noqa: E402
from infer.loading import load_model  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from tests.model.hf import hf_fixtures as fx  # noqa: E402

ARCHS = ("llama", "mistral", "qwen2", "mixtral", "gpt2")
TOL = 1e-4
NEW_TOKENS = 6


@pytest.fixture(scope="module", params=ARCHS)
def imported(request, tmp_path_factory):
  arch = request.param
  root = tmp_path_factory.mktemp(arch)
  model = fx.build_model(arch)
  model.save_pretrained(root / "hf")
  fx.write_tokenizer_json(str(root / "hf"))
  import_hf(str(root / "hf"), str(root / "run"))
  loaded = load_model(str(root / "run"))
  return arch, model, root, loaded


def _our_logits(loaded, ids):
  logits, _ = Transformer(loaded.model_config).apply({"params": loaded.params}, ids)
  return np.asarray(logits)


def test_logits_match_transformers_on_ragged_prompts(imported):
  arch, model, _, loaded = imported
  ids, lengths = fx.ragged_batch(loaded.tokenizer)
  assert len(set(lengths)) > 2  # really ragged
  ours = _our_logits(loaded, ids)
  ref = fx.hf_logits(model, ids, lengths)
  diff = max(float(np.abs(ours[i, :n] - ref[i]).max()) for i, n in enumerate(lengths))
  assert diff < TOL, f"{arch}: max |logit diff| {diff}"
  assert max(float(np.abs(r).max()) for r in ref) > 0.5  # logits far from trivial


def test_greedy_continuations_match(imported):
  import torch  # pylint: disable=g-import-not-at-top
  arch, model, _, loaded = imported
  prompts = [[loaded.tokenizer.bos_id] + loaded.tokenizer.encode(p) for p in fx.PROMPTS[:3]]
  decoder = Decoder(loaded.model_config, loaded.mesh)
  greedy = sampling.make_sampling_params(len(prompts), "greedy")
  ours = decoder.generate(loaded.params, prompts, NEW_TOKENS, greedy).tokens
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert got == out[0, len(prompt):].tolist(), arch


def test_export_reloads_in_transformers_and_round_trips(imported):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  arch, model, root, loaded = imported
  summary = export_hf(str(root / "run"), str(root / "export"))
  assert summary["model_type"] == arch
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(root / "export"))
  reloaded.eval()
  assert type(reloaded) is type(model)
  ids, lengths = fx.ragged_batch(loaded.tokenizer)
  want = fx.hf_logits(model, ids, lengths)
  got = fx.hf_logits(reloaded, ids, lengths)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
  with torch.no_grad():  # every original parameter came back exactly
    mine = dict(reloaded.named_parameters())
    for name, p in model.named_parameters():
      assert torch.equal(mine[name], p), name
  import_hf(str(root / "export"), str(root / "reimported"))
  again = load_model(str(root / "reimported"))
  flat_a = jax.tree_util.tree_leaves_with_path(loaded.params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(again.params))
  for path, leaf in flat_a:
    assert np.array_equal(np.asarray(leaf), np.asarray(flat_b[path])), (arch, path)
