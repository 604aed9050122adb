"""Safetensors shards + bfloat16, import onto an 8-device mesh, export of LoRA / int8 / QAT
runs, refusals and clear errors, and the two CLIs end to end."""

import dataclasses
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from infer.hf_export import export_hf  # noqa: E402
from infer.hf_import import import_hf, load_hf  # noqa: E402
from infer.loading import load_model  # noqa: E402
from infer.run_writer import write_params_run  # noqa: E402
from model import sharding, store  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.hf import configs, safetensors_io  # noqa: E402
from model.peft import PeftConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from tests.cli_runner import run_module  # noqa: E402
from tests.model.hf import hf_fixtures as fx  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """A tiny Llama saved by transformers, and its import."""
  root = tmp_path_factory.mktemp("io")
  model = fx.build_model("llama")
  model.save_pretrained(root / "hf")
  fx.write_tokenizer_json(str(root / "hf"))
  import_hf(str(root / "hf"), str(root / "run"))
  return model, root, load_model(str(root / "run"))


def _logits(config, params, ids, peft=PeftConfig(), quant=None):
  from model.quant import QuantConfig  # pylint: disable=g-import-not-at-top
  model = Transformer(config, peft, quant or QuantConfig())
  return np.asarray(model.apply({"params": params}, ids)[0])  # eager: tiny, no compile


def _hf_batch_logits(path, ids, lengths):
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="float32")
  return fx.hf_logits(model.eval(), ids, lengths)


def _max_diff(ours, ref, lengths):
  """Max |difference| over real (unpadded) positions; `ref` is [B, L, V] or a list of rows."""
  return max(float(np.abs(ours[i, :n] - ref[i][:n]).max()) for i, n in enumerate(lengths))


def test_safetensors_shards_and_bfloat16_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {f"t{i}": rng.normal(size=(64, 32)).astype(np.float32) for i in range(5)}
  files = safetensors_io.write(str(tmp_path), iter(tensors.items()), "bfloat16",
                               max_shard_bytes=3 * 64 * 32 * 2)
  assert len(files) == 2 and os.path.exists(tmp_path / safetensors_io.INDEX_FILE)
  reader = safetensors_io.Reader(str(tmp_path))
  assert reader.names() == sorted(tensors)
  for name, value in tensors.items():
    got = reader.get(name)
    assert got.dtype == ml_dtypes.bfloat16 and reader.dtype_name(name) == "BF16"
    np.testing.assert_array_equal(got, value.astype(ml_dtypes.bfloat16))
  from safetensors import safe_open  # the reference reader agrees
  with safe_open(str(tmp_path / files[0]), "pt") as f:
    name = sorted(f.keys())[0]
    np.testing.assert_array_equal(f.get_tensor(name).float().numpy(),
                                  tensors[name].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_sharded_bfloat16_export_loads_in_transformers_and_reimports(llama, tmp_path):
  model, root, loaded = llama
  out = tmp_path / "bf16"
  summary = export_hf(str(root / "run"), str(out), dtype="bfloat16", max_shard_mb=0)
  assert len(summary["files"]) > 3 and os.path.exists(out / safetensors_io.INDEX_FILE)
  ids, lengths = fx.ragged_batch(loaded.tokenizer)
  hf_ref = _hf_batch_logits(str(out), ids, lengths)  # transformers reads our shards + index
  import_hf(str(out), str(tmp_path / "run_bf16"))
  again = load_model(str(tmp_path / "run_bf16"))
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
                         loaded.params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), again.params,
               rounded)
  assert _max_diff(_logits(again.model_config, again.params, ids), hf_ref, lengths) < 1e-4


def test_import_onto_8_devices_equals_single_device(llama):
  _, root, _ = llama
  assert jax.device_count() == 8
  one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  config, single, _ = load_hf(str(root / "hf"), one)
  _, sharded, _ = load_hf(str(root / "hf"), mesh)
  n_split = 0
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    n_split += not b.sharding.is_fully_replicated
  assert n_split >= 5  # kernels really are spread over fsdp x tensor
  ids, _ = fx.ragged_batch(llama[2].tokenizer, fx.PROMPTS[:4] * 2)
  with sharding.use_mesh(mesh):
    got = _logits(config, sharded, jax.device_put(ids, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(got, _logits(config, single, ids), atol=1e-5)


def test_merged_lora_export_matches_the_lora_model(llama, tmp_path):
  model, root, loaded = llama
  peft = PeftConfig(method="lora", rank=4, targets="all")
  fresh = Transformer(loaded.model_config, peft).init(jax.random.key(1),
                                                      jnp.zeros((1, 4), jnp.int32))["params"]
  from model.peft import graft  # pylint: disable=g-import-not-at-top
  params = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(
      graft(loaded.params, fresh)))

  def randomize(path, x):  # lora_b starts at zero: make the update real
    name = jax.tree_util.keystr(path)
    return np.random.default_rng(len(name)).normal(0, 0.05, x.shape).astype(np.float32) \
        if "lora_b" in name else x
  params = jax.tree_util.tree_map_with_path(randomize, params)
  sections = dict(store.read_run_config(str(root / "run")).sections,
                  peft=dataclasses.asdict(peft))
  write_params_run(str(root / "run"), str(tmp_path / "lora"), sections, 0, params)
  with pytest.raises(ValueError, match="--merge_lora"):
    export_hf(str(tmp_path / "lora"), str(tmp_path / "nope"))
  export_hf(str(tmp_path / "lora"), str(tmp_path / "merged"), merge_lora=True)
  ids, lengths = fx.ragged_batch(loaded.tokenizer)
  ours = _logits(loaded.model_config, params, ids, peft)
  assert _max_diff(ours, fx.hf_logits(model, ids, lengths), lengths) > 1e-2  # LoRA is real
  assert _max_diff(ours, _hf_batch_logits(str(tmp_path / "merged"), ids, lengths),
                   lengths) < 1e-4


@pytest.mark.parametrize("kind", ["int8", "qat"])
def test_quantized_and_qat_runs_export_the_weights_they_compute_with(llama, tmp_path, kind):
  from model.quant import QuantConfig  # pylint: disable=g-import-not-at-top
  model, root, loaded = llama
  run = tmp_path / kind
  if kind == "int8":
    from infer.quantize import quantize_run  # pylint: disable=g-import-not-at-top
    quantize_run(str(root / "run"), str(run), scheme="int8")
  else:
    sections = dict(store.read_run_config(str(root / "run")).sections,
                    quant=dataclasses.asdict(QuantConfig(qat="int4", group_size=16)))
    write_params_run(str(root / "run"), str(run), sections, 0,
                     jax.tree.map(np.asarray, loaded.params))
  q = load_model(str(run))
  ids, lengths = fx.ragged_batch(loaded.tokenizer)
  ours = _logits(q.model_config, q.params, ids, quant=q.quant)
  assert _max_diff(ours, fx.hf_logits(model, ids, lengths), lengths) > 1e-4  # really quantized
  export_hf(str(run), str(tmp_path / "out"))
  assert _max_diff(ours, _hf_batch_logits(str(tmp_path / "out"), ids, lengths), lengths) < 1e-4


def test_clear_errors(llama, tmp_path):
  _, root, _ = llama
  with pytest.raises(FileNotFoundError, match="not a directory"):
    load_hf(str(tmp_path / "missing"))
  bad = tmp_path / "bad"
  shutil.copytree(root / "hf", bad)
  config = json.loads((bad / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps(dict(config, model_type="falcon")))
  with pytest.raises(ValueError, match="model_type 'falcon' is not supported"):
    load_hf(str(bad))
  (bad / "config.json").write_text(json.dumps(dict(config, use_qk_norm=True)))
  with pytest.raises(ValueError, match=r"\['use_qk_norm'\] are not understood"):
    load_hf(str(bad))
  (bad / "config.json").write_text(json.dumps(config))
  os.remove(bad / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    load_hf(str(bad))
  os.remove(bad / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_hf(str(bad))
  notok = tmp_path / "notok"
  shutil.copytree(root / "hf", notok)
  os.remove(notok / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
    import_hf(str(notok), str(tmp_path / "run_notok"))
  assert not os.path.exists(tmp_path / "run_notok")


@pytest.mark.parametrize("option,value,arch", [
    ("norm_position", "post", "llama"), ("pos_encoding", "sinusoidal", "llama"),
    ("capacity_factor", 1.25, "mixtral"), ("n_shared_experts", 1, "mixtral"),
    ("router_weighting", "topk_probs", "mixtral"), ("moe_every", 2, "mixtral")])
def test_export_refuses_options_without_an_hf_equivalent(option, value, arch):
  moe = dict(n_experts=4, experts_per_token=2, n_layers=2) if arch == "mixtral" else {}
  config = dataclasses.replace(ModelConfig(**moe), **{option: value})
  with pytest.raises(configs.UnsupportedConfig, match=f"model.{option}="):
    configs.to_hf(config, arch)


def test_native_configs_export_as_the_closest_architecture():
  from model.config import preset  # pylint: disable=g-import-not-at-top
  assert configs.infer_model_type(preset("tiny")) == "llama"
  assert configs.infer_model_type(preset("125m")) == "gpt2"
  assert configs.infer_model_type(preset("moe_tiny")) == "mixtral"
  for name in ("tiny", "125m", "moe_tiny"):  # round trip of the config itself
    c = preset(name, **({"capacity_factor": 0.0} if "moe" in name else {}))
    back, _ = configs.from_hf(configs.to_hf(c, configs.infer_model_type(c)))
    fields = ("d_model", "n_layers", "n_heads", "heads_kv", "head_dim", "ffw_dim",
              "vocab_size", "tie_embeddings", "norm", "activation", "pos_encoding",
              "norm_eps", "rope_theta", "n_experts", "expert_ffw_dim")
    if c.is_moe:  # with an MoE FFN in every layer the dense width is unused
      fields = tuple(f for f in fields if f != "ffw_dim")
    assert {f: getattr(back, f) for f in fields} == {f: getattr(c, f) for f in fields}


@pytest.mark.slow
def test_cli_import_generate_export(tmp_path):
  model = fx.build_model("gpt2")
  model.save_pretrained(tmp_path / "hf")
  fx.write_tokenizer_json(str(tmp_path / "hf"))
  run_module(["infer.hf_import", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'run'}"])
  proc = run_module(["infer.generate", f"--workdir={tmp_path / 'run'}", "--prompt=Hello",
                     "--max_new_tokens=4", "--sampler=greedy"])
  assert proc.stdout.strip()
  run_module(["infer.hf_export", f"--workdir={tmp_path / 'run'}", "--merge_lora=false",
              f"--out={tmp_path / 'out'}"])
  assert os.path.exists(tmp_path / "out" / "model.safetensors")
  proc = run_module(["infer.hf_import", f"--hf_dir={tmp_path / 'nowhere'}",
                     f"--workdir={tmp_path / 'x'}"], check=False)
  assert proc.returncode == 1 and "hf_import: error:" in proc.stderr
