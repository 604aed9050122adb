"""Parameter and FLOP counts of a ModelConfig: the one FLOP counter (pure Python).

Conventions (fixed; experiments and MFU depend on them):
- "embedding" parameters = token table + untied output projection + learned position
  table. Everything else (attention, FFN / experts / router, norms) is non-embedding.
- "active" parameters count, per MoE layer, only `experts_per_token` routed experts
  (plus the router and shared experts): what one token actually multiplies with.
- Training FLOPs per token = 3 x forward (backward = 2 x forward), one multiply-add = 2.
- method="exact" follows Chinchilla (Hoffmann et al. 2022) appendix F, per token:
    Q/K/V projections     2 * d * (n*h + 2*k*h)        (GQA-aware)
    attention logits      2 * seq_len * n*h            (QK^T, full seq_len x seq_len,
    softmax               3 * n * seq_len               causal masking NOT discounted,
    softmax @ V           2 * seq_len * n*h             exactly as Chinchilla counts)
    output projection     2 * n*h * d
    FFN                   2 * d * f * (3 if swiglu else 2)
    MoE FFN               2 * d * E (router) + (k_routed + n_shared) * expert FFN
    final logits          2 * d * V
  Unlike Chinchilla, the input embedding is not counted: it is a gather, not a matmul.
  Norms, residual adds, rotary and position additions are ignored (as Chinchilla does).
- method="6n" = 6 * active non-embedding params (include_embedding=True: 6 * active params).
- method="palm" = 6 * N + 12 * n_layers * (n_heads * head_dim) * seq_len (PaLM appendix B,
  with n_heads*head_dim in place of d_model, equal by default), where N is the same
  parameter count as "6n" (active non-embedding unless include_embedding=True).
"""

from model.config import ModelConfig

METHODS = ("exact", "6n", "palm")


def _norm_params(config: ModelConfig) -> int:
  return config.d_model * (1 if config.norm == "rms" else 2)


def _ffn_params(config: ModelConfig, width: int) -> int:
  return config.d_model * width * (3 if config.activation == "swiglu" else 2)


def _attention_params(config: ModelConfig) -> int:
  d, n, k, h = config.d_model, config.n_heads, config.heads_kv, config.head_dim
  return d * n * h + 2 * d * k * h + n * h * d


def _moe_params(config: ModelConfig, n_routed: int) -> int:
  """Router + `n_routed` routed experts + shared experts (all of expert_ffw_dim width)."""
  expert = _ffn_params(config, config.expert_ffw_dim)
  return config.d_model * config.n_experts + (n_routed + config.n_shared_experts) * expert


def param_counts(config: ModelConfig) -> dict:
  """Exact parameter counts of Transformer(config)'s parameter tree (see module doc)."""
  if config.arch == "encoder_decoder":
    return encoder_decoder_param_counts(config)
  c = config
  embedding = c.vocab_size * c.d_model
  if not c.tie_embeddings:
    embedding += c.d_model * c.vocab_size
  if c.pos_encoding == "learned":
    embedding += c.max_len * c.d_model
  n_dense = c.n_layers - c.n_moe_layers
  shared = c.n_layers * (_attention_params(c) + 2 * _norm_params(c))
  if c.norm_position == "pre":
    shared += _norm_params(c)
  shared += n_dense * _ffn_params(c, c.ffw_dim)
  non_embedding = shared + c.n_moe_layers * _moe_params(c, c.n_experts)
  active_non_embedding = shared + c.n_moe_layers * _moe_params(c, c.experts_per_token)
  return {
      "total": embedding + non_embedding,
      "non_embedding": non_embedding,
      "embedding": embedding,
      "active": embedding + active_non_embedding,
      "active_non_embedding": active_non_embedding,
  }


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> int:
  """Chinchilla-style forward FLOPs per token (see module doc for the terms)."""
  c = config
  d, n, k, h = c.d_model, c.n_heads, c.heads_kv, c.head_dim
  d_attn = n * h
  attention = (2 * d * (d_attn + 2 * k * h)  # Q, K, V projections
               + 2 * seq_len * d_attn        # QK^T logits
               + 3 * n * seq_len             # softmax
               + 2 * seq_len * d_attn        # probs @ V
               + 2 * d_attn * d)             # output projection
  ffn = 2 * _ffn_params(c, c.ffw_dim)
  moe = 2 * _moe_params(c, c.experts_per_token)
  n_dense = c.n_layers - c.n_moe_layers
  logits = 2 * d * c.vocab_size
  return c.n_layers * attention + n_dense * ffn + c.n_moe_layers * moe + logits


def flops_per_token(config: ModelConfig, seq_len: int, method: str = "exact",
                    include_embedding: bool = False, source_len: int = 0) -> int:
  """Training (forward + backward) FLOPs per token.

  include_embedding only affects "6n" and "palm" ("exact" always counts the output
  logits matmul and never the input lookup). An encoder-decoder counts per target token:
  3 x the forward FLOPs of one example (`source_len` source tokens, 0 = seq_len) / seq_len.
  """
  if method not in METHODS:
    raise ValueError(f"unknown FLOP method {method!r}; choose one of {METHODS}")
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if config.arch == "encoder_decoder":  # per target token, sources of source_len (0: seq_len)
    if method != "exact":
      raise ValueError("encoder-decoder FLOPs are counted with method='exact' only")
    per_example = encoder_decoder_forward_flops(config, source_len or seq_len, seq_len)
    return 3 * per_example["total"] // seq_len
  if method == "exact":
    return 3 * forward_flops_per_token(config, seq_len)
  counts = param_counts(config)
  n = counts["active"] if include_embedding else counts["active_non_embedding"]
  flops = 6 * n
  if method == "palm":
    flops += 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
  return flops


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_total: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak (all chips)."""
  if peak_flops_total <= 0:
    raise ValueError(f"peak_flops_total must be positive, got {peak_flops_total}")
  return tokens_per_s * flops_per_token / peak_flops_total


# -- encoder-only ---------------------------------------------------------------------------
# An encoder's blocks are the decoder's blocks under a bidirectional mask. Chinchilla's
# count above already charges every query for all seq_len keys (causal masking is not
# discounted), so per token an encoder with a masked-LM head costs exactly what
# forward_flops_per_token says. What differs is the work the mask makes necessary
# (`visible_attention_flops_per_token`: a causal query sees (L+1)/2 keys on average, a
# bidirectional one all L) and the output: a pooled classifier replaces the [L, V] logits
# by one D -> n_labels projection per sequence.


def _attention_core_flops(config: ModelConfig, keys: float) -> float:
  """QK^T + softmax + probs @ V of one query attending to `keys` keys."""
  d_attn = config.n_heads * config.head_dim
  return 2 * keys * d_attn + 3 * config.n_heads * keys + 2 * keys * d_attn


def visible_attention_flops_per_token(config: ModelConfig, seq_len: int, mask: str) -> float:
  """Attention-core FLOPs per token over all layers counting only visible keys.

  mask: "causal" (query i sees i + 1 keys: (L + 1) / 2 on average) or "bidirectional"
  (all L). Projections are excluded: they do not depend on the mask.
  """
  if mask not in ("causal", "bidirectional"):
    raise ValueError(f"mask must be 'causal' or 'bidirectional', got {mask!r}")
  keys = (seq_len + 1) / 2 if mask == "causal" else seq_len
  return config.n_layers * _attention_core_flops(config, keys)


def encoder_forward_flops_per_sequence(config: ModelConfig, seq_len: int,
                                       output: str = "mlm", n_labels: int = 0,
                                       pooling: str = "mean") -> int:
  """Forward FLOPs of one sequence through an encoder with an MLM or pooled head.

  output="mlm": logits at every position (what the masked-LM objective computes).
  output="classify": mean pooling (L * D adds, "first" pooling: none) then a D -> n_labels
  projection (2 * D * n_labels; bias adds ignored).
  """
  per_token_blocks = forward_flops_per_token(config, seq_len) - 2 * config.d_model * config.vocab_size
  blocks = seq_len * per_token_blocks
  if output == "mlm":
    return blocks + seq_len * 2 * config.d_model * config.vocab_size
  if output == "classify":
    if n_labels < 1:
      raise ValueError(f"n_labels must be >= 1 for output='classify', got {n_labels}")
    pool = seq_len * config.d_model if pooling == "mean" else 0
    return blocks + pool + 2 * config.d_model * n_labels
  raise ValueError(f"output must be 'mlm' or 'classify', got {output!r}")


# -- encoder-decoder -------------------------------------------------------------------------
# model/encoder_decoder.py: an encoder stack (the decoder's blocks, bidirectional) and a
# decoder stack whose blocks add cross-attention (query and output projections per target
# token, key and value projections once per source token, attention over all S source
# positions). Counts follow the Chinchilla convention of the module doc.


def _attention_projection_flops(config: ModelConfig) -> int:
  d, n, k, h = config.d_model, config.n_heads, config.heads_kv, config.head_dim
  return 2 * d * (n * h + 2 * k * h) + 2 * n * h * d


def _ffn_flops_all_layers(config: ModelConfig) -> int:
  n_dense = config.n_layers - config.n_moe_layers
  return (n_dense * 2 * _ffn_params(config, config.ffw_dim)
          + config.n_moe_layers * 2 * _moe_params(config, config.experts_per_token))


def encoder_decoder_param_counts(config: ModelConfig) -> dict:
  """Exact parameter counts of EncoderDecoder(config) (same keys as `param_counts`)."""
  c = config
  embedding = c.vocab_size * c.d_model + (0 if c.tie_embeddings else c.d_model * c.vocab_size)
  if c.pos_encoding == "learned":
    embedding += 2 * c.max_len * c.d_model  # one position table per stack
  n_dense = c.n_layers - c.n_moe_layers
  final_norms = 2 * _norm_params(c) if c.norm_position == "pre" else 0
  encoder = c.n_layers * (_attention_params(c) + 2 * _norm_params(c))
  decoder = c.n_layers * (2 * _attention_params(c) + 3 * _norm_params(c))  # self + cross
  shared = encoder + decoder + final_norms + 2 * n_dense * _ffn_params(c, c.ffw_dim)
  non_embedding = shared + 2 * c.n_moe_layers * _moe_params(c, c.n_experts)
  active_non_embedding = shared + 2 * c.n_moe_layers * _moe_params(c, c.experts_per_token)
  return {"total": embedding + non_embedding, "non_embedding": non_embedding,
          "embedding": embedding, "active": embedding + active_non_embedding,
          "active_non_embedding": active_non_embedding}


def encoder_decoder_forward_flops(config: ModelConfig, source_len: int, target_len: int) -> dict:
  """Forward FLOPs of one example (S source, L target tokens): encoder, cross-attention
  K/V, decoder (self-attention, cross-attention queries/outputs/core, FFN) and logits."""
  if source_len < 1 or target_len < 1:
    raise ValueError(f"source_len and target_len must be >= 1, got {source_len}, {target_len}")
  c = config
  d, n, k, h = c.d_model, c.n_heads, c.heads_kv, c.head_dim
  encoder = source_len * (c.n_layers * (_attention_projection_flops(c)
                                        + _attention_core_flops(c, source_len))
                          + _ffn_flops_all_layers(c))
  cross_kv = source_len * c.n_layers * 2 * d * 2 * k * h
  cross_per_target = c.n_layers * (2 * d * n * h + 2 * n * h * d
                                   + _attention_core_flops(c, source_len))
  self_per_target = c.n_layers * (_attention_projection_flops(c)
                                  + _attention_core_flops(c, target_len))
  decoder = target_len * (self_per_target + cross_per_target + _ffn_flops_all_layers(c))
  logits = target_len * 2 * d * c.vocab_size
  parts = {"encoder": encoder, "cross_kv": cross_kv, "decoder": decoder, "logits": logits}
  return {name: int(round(v)) for name, v in parts.items()} | {
      "total": int(round(encoder + cross_kv + decoder + logits))}
