"""Hugging Face config.json <-> ModelConfig, per architecture, refusing what has no match.

Import (`from_hf`) reads every key of config.json: an architectural key maps to a
ModelConfig field, a key that changes nothing at inference (ids, dropout, init range,
metadata) is skipped, and any other key is an error naming it, because silently
dropping it could give a different model. Export (`to_hf`) writes the config of one
architecture and refuses a ModelConfig option that architecture cannot express, naming
the option to change.

Supported: llama (2 and 3.x, incl. "llama3" and "linear" rope scaling), mistral, qwen2,
mixtral and gpt2.
"""

import dataclasses

from model.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "mixtral": "MixtralForCausalLM",
                 "gpt2": "GPT2LMHeadModel"}
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "mixtral")

# Keys that do not change the function the network computes at inference.
_NEUTRAL = {
    "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "_name_or_path", "model_type", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16",
    "tokenizer_class", "prefix", "task_specific_params", "problem_type", "id2label",
    "label2id", "finetuning_task", "chunk_size_feed_forward", "is_decoder", "pruned_heads",
    "tf_legacy_loss", "attention_dropout", "pretraining_tp", "output_router_logits",
    "router_aux_loss_coef", "router_jitter_noise", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "reorder_and_upcast_attn",
    # Generation defaults that older configs carried (generation_config.json holds them now).
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature",
    "top_k", "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "num_return_sequences", "bad_words_ids", "typical_p", "diversity_penalty",
    "num_beam_groups", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "encoder_no_repeat_ngram_size", "output_scores",
    "return_dict_in_generate", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "is_encoder_decoder",
}
# Neutral keys whose value must be this one (anything else changes the network).
_REQUIRED = {"is_encoder_decoder": (False, None), "add_cross_attention": (False, None),
             "is_decoder": (False, True, None)}
_LLAMA_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters",
    "head_dim"}
_KEYS = {
    "llama": _LLAMA_KEYS | {"attention_bias", "mlp_bias"},
    "mistral": _LLAMA_KEYS | {"sliding_window"},
    "qwen2": _LLAMA_KEYS | {"use_sliding_window", "sliding_window", "max_window_layers",
                            "layer_types"},
    "mixtral": _LLAMA_KEYS | {"num_local_experts", "num_experts_per_tok", "sliding_window"},
    "gpt2": {"vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
             "activation_function", "layer_norm_epsilon", "tie_word_embeddings",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx"},
}
_GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # tanh form = flax nn.gelu


class UnsupportedConfig(ValueError):
  """A config (HF or ours) with no exact counterpart on the other side."""


@dataclasses.dataclass(frozen=True)
class HfInfo:
  """What an import keeps besides the ModelConfig: the architecture and the source config."""
  model_type: str
  config: dict


def model_type_of(hf: dict, where: str) -> str:
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise UnsupportedConfig(
        f"{where}: model_type {model_type!r} is not supported; supported: "
        f"{sorted(ARCHITECTURES)}")
  return model_type


def from_hf(hf: dict, where: str = "config.json") -> tuple[ModelConfig, HfInfo]:
  """The ModelConfig computing what the HF model computes (float32 parameters)."""
  model_type = model_type_of(hf, where)
  unknown = sorted(set(hf) - _KEYS[model_type] - _NEUTRAL)
  if unknown:
    raise UnsupportedConfig(
        f"{where}: key(s) {unknown} are not understood by the {model_type} converter; the "
        "model may compute something this code does not (remove the key only if you know it "
        "is inert)")
  for key, allowed in _REQUIRED.items():
    if key in hf and hf[key] not in allowed:
      raise UnsupportedConfig(f"{where}: {key}={hf[key]!r} is not supported (decoder-only "
                              "causal LMs only)")
  build = _from_gpt2 if model_type == "gpt2" else _from_llama_family
  return build(hf, model_type, where), HfInfo(model_type, dict(hf))


def _get(hf: dict, key: str, default=None):
  value = hf.get(key)
  return default if value is None else value


def _rope_fields(hf: dict, where: str) -> dict:
  """rope_theta / rope scaling from v5 `rope_parameters` or legacy rope_theta + rope_scaling."""
  params = dict(_get(hf, "rope_parameters", {}))
  if "rope_type" not in params and isinstance(params.get("full_attention"), dict):
    params = dict(params["full_attention"])
  legacy = dict(_get(hf, "rope_scaling", {}))
  merged = {**legacy, **params}
  theta = merged.get("rope_theta", _get(hf, "rope_theta", 10_000.0))
  kind = merged.get("rope_type", merged.get("type", "default"))
  if merged.get("partial_rotary_factor", 1.0) != 1.0:
    raise UnsupportedConfig(f"{where}: partial_rotary_factor != 1 is not supported")
  out = {"rope_theta": float(theta)}
  if kind == "default":
    return out
  if kind == "linear":
    return dict(out, rope_scaling="linear", rope_factor=float(merged["factor"]))
  if kind == "llama3":
    return dict(out, rope_scaling="llama3", rope_factor=float(merged["factor"]),
                rope_low_freq_factor=float(merged["low_freq_factor"]),
                rope_high_freq_factor=float(merged["high_freq_factor"]),
                rope_original_max_len=int(merged["original_max_position_embeddings"]))
  raise UnsupportedConfig(f"{where}: rope type {kind!r} is not supported (default, linear, "
                          "llama3)")


def _from_llama_family(hf: dict, model_type: str, where: str) -> ModelConfig:
  if _get(hf, "hidden_act", "silu") != "silu":
    raise UnsupportedConfig(f"{where}: hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) "
                            "is supported for this architecture")
  n_heads = int(hf["num_attention_heads"])
  max_len = int(_get(hf, "max_position_embeddings", 2048))
  window = hf.get("sliding_window")
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    window = None
  if window is not None and int(window) < max_len:
    max_len = int(window)  # full attention equals sliding-window attention up to the window
  fields = dict(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
      n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
      n_kv_heads=int(_get(hf, "num_key_value_heads", n_heads)),
      d_head=int(_get(hf, "head_dim", int(hf["hidden_size"]) // n_heads)),
      d_ff=int(hf["intermediate_size"]), max_len=max_len, pos_encoding="rope",
      norm="rms", norm_position="pre", norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
      activation="swiglu", tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
      **_rope_fields(hf, where))
  if model_type == "llama":
    bias = bool(_get(hf, "attention_bias", False))
    fields.update(qkv_bias=bias, out_bias=bias, mlp_bias=bool(_get(hf, "mlp_bias", False)))
  elif model_type == "qwen2":
    fields.update(qkv_bias=True)
  elif model_type == "mixtral":
    k = int(_get(hf, "num_experts_per_tok", 2))
    if k < 2:
      raise UnsupportedConfig(
          f"{where}: num_experts_per_tok={k}: Mixtral's renormalised top-1 weight is always "
          "1, while this code's top-1 weight is the router probability")
    fields.update(n_experts=int(hf["num_local_experts"]), experts_per_token=k, moe_every=1,
                  d_ff_expert=int(hf["intermediate_size"]), capacity_factor=0.0,
                  router_weighting="softmax_topk",
                  load_balance_weight=float(_get(hf, "router_aux_loss_coef", 0.01)))
  return ModelConfig(**fields)


def _from_gpt2(hf: dict, model_type: str, where: str) -> ModelConfig:
  del model_type
  act = _get(hf, "activation_function", "gelu_new")
  if act not in _GPT2_GELUS:
    raise UnsupportedConfig(f"{where}: activation_function={act!r}; only the tanh GELU "
                            f"{_GPT2_GELUS} is supported")
  if not _get(hf, "scale_attn_weights", True) or _get(hf, "scale_attn_by_inverse_layer_idx",
                                                      False):
    raise UnsupportedConfig(f"{where}: scale_attn_weights must be true and "
                            "scale_attn_by_inverse_layer_idx false")
  if not _get(hf, "tie_word_embeddings", True):
    raise UnsupportedConfig(f"{where}: GPT-2 with an untied head is not supported")
  d = int(hf["n_embd"])
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["n_layer"]),
      n_heads=int(hf["n_head"]), d_ff=int(_get(hf, "n_inner", 4 * d)),
      max_len=int(_get(hf, "n_positions", 1024)), pos_encoding="learned", norm="layer",
      norm_position="pre", norm_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)),
      activation="gelu", tie_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True)


# -- export --------------------------------------------------------------------------------

def infer_model_type(c: ModelConfig) -> str:
  """The architecture a run's ModelConfig is closest to (for runs not imported from HF)."""
  if c.pos_encoding == "learned" or c.norm == "layer" or c.activation != "swiglu":
    return "gpt2"
  if c.is_moe:
    return "mixtral"
  if c.qkv_bias and not c.out_bias and not c.mlp_bias:
    return "qwen2"
  return "llama"


def _refuse(option: str, value, model_type: str, want) -> None:
  raise UnsupportedConfig(
      f"model.{option}={value!r} has no equivalent in Hugging Face {model_type} "
      f"(needs {want}); this run cannot be exported")


def check_exportable(c: ModelConfig, model_type: str) -> None:
  """Raises UnsupportedConfig naming the first option `model_type` cannot express."""
  if getattr(c, "arch", "decoder") != "decoder":
    _refuse("arch", c.arch, model_type, "'decoder'")
  if c.norm_position != "pre":
    _refuse("norm_position", c.norm_position, model_type, "'pre'")
  want = ({"pos_encoding": "learned", "norm": "layer", "activation": "gelu",
           "tie_embeddings": True, "n_experts": 0}
          if model_type == "gpt2" else
          {"pos_encoding": "rope", "norm": "rms", "activation": "swiglu"})
  for option, value in want.items():
    if getattr(c, option) != value:
      _refuse(option, getattr(c, option), model_type, repr(value))
  if model_type == "gpt2":
    if c.heads_kv != c.n_heads or c.head_dim * c.n_heads != c.d_model:
      _refuse("n_kv_heads", c.n_kv_heads, model_type,
              "n_kv_heads = n_heads and d_head * n_heads = d_model")
    return
  if model_type == "mixtral":
    moe = {"moe_every": (c.moe_every, 1), "n_shared_experts": (c.n_shared_experts, 0),
           "router_weighting": (c.router_weighting, "softmax_topk")}
    for option, (value, need) in moe.items():
      if value != need:
        _refuse(option, value, model_type, repr(need))
    if not c.is_moe:
      _refuse("n_experts", c.n_experts, model_type, "> 0")
    if c.capacity_factor > 0:
      _refuse("capacity_factor", c.capacity_factor, model_type,
              "dropless routing, capacity_factor <= 0")
    if c.experts_per_token < 2:
      _refuse("experts_per_token", c.experts_per_token, model_type, ">= 2")
  elif c.is_moe:
    _refuse("n_experts", c.n_experts, model_type, "0 (use mixtral)")
  biases = (c.qkv_bias, c.out_bias, c.mlp_bias)
  allowed = {"llama": [(False, False, False), (True, True, False), (False, False, True),
                       (True, True, True)],
             "qwen2": [(True, False, False)]}.get(model_type, [(False, False, False)])
  if biases not in allowed:
    _refuse("qkv_bias/out_bias/mlp_bias", biases, model_type, f"one of {allowed}")


def _rope_to_hf(c: ModelConfig) -> dict:
  params = {"rope_theta": c.rope_theta, "rope_type": "default"}
  if c.rope_scaling == "linear":
    params.update(rope_type="linear", factor=c.rope_factor)
  elif c.rope_scaling == "llama3":
    params.update(rope_type="llama3", factor=c.rope_factor,
                  low_freq_factor=c.rope_low_freq_factor,
                  high_freq_factor=c.rope_high_freq_factor,
                  original_max_position_embeddings=c.rope_original_max_len)
  return params


def to_hf(c: ModelConfig, model_type: str, token_ids: dict | None = None) -> dict:
  """config.json for `model_type`; `token_ids` holds bos/eos/pad_token_id when known."""
  if model_type not in ARCHITECTURES:
    raise UnsupportedConfig(f"unknown export architecture {model_type!r}; choose one of "
                            f"{sorted(ARCHITECTURES)}")
  check_exportable(c, model_type)
  out = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
         "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings,
         "dtype": "float32", **(token_ids or {})}
  if model_type == "gpt2":
    out.update(n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.ffw_dim,
               n_positions=c.max_len, activation_function="gelu_new",
               layer_norm_epsilon=c.norm_eps)
    return out
  out.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers,
             num_attention_heads=c.n_heads, num_key_value_heads=c.heads_kv,
             head_dim=c.head_dim, intermediate_size=c.ffw_dim, hidden_act="silu",
             max_position_embeddings=c.max_len, rms_norm_eps=c.norm_eps,
             rope_parameters=_rope_to_hf(c))
  if model_type == "llama":
    out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
  elif model_type in ("mistral", "mixtral"):
    out.update(sliding_window=None)
  elif model_type == "qwen2":
    out.update(use_sliding_window=False)
  if model_type == "mixtral":
    out.update(num_local_experts=c.n_experts, num_experts_per_tok=c.experts_per_token,
               intermediate_size=c.expert_ffw_dim, router_aux_loss_coef=c.load_balance_weight)
  return out
