"""Variable-length (packed) attention for the language model: each packed sample attends only to itself.

A packed row holds several samples back to back; the collator gives their boundaries as ``cu_seq_lens_q/k``
(cumulative lengths, transformers' flash-attention names) and ``max_length_q/k``, and position ids that restart
at 0 per sample. transformers passes these keyword arguments through every decoder layer to the attention function.

Which attention runs on packed rows (``packed_attention``):

* ``flash_attention_2``/``_3`` (flash-attn installed, CUDA): transformers' own varlen path (``flash_attn_varlen_func``
  on ``cu_seq_lens``). Nothing here.
* otherwise ``internvl_varlen`` (registered here): one causal SDPA call per sample on its slice of the row, so no
  work is spent on pairs across samples (a dense block-diagonal mask over the whole row costs ``T^2``; PyTorch's
  jagged nested tensors do not run SDPA on CPU in the pinned torch). Without ``cu_seq_lens`` (unpacked batches,
  generation) it is plain SDPA with the usual padding mask.
* ``sdpa``/``eager`` chosen explicitly (``--attn_implementation sdpa``): transformers detects the restarting position
  ids and builds the dense block-diagonal mask. Correct, quadratic; the fallback of last resort.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import AttentionInterface

VARLEN = "internvl_varlen"
FLASH = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """``query``/``key``/``value``: ``[batch, heads, T, dim]``. With ``cu_seq_lens_q`` (a packed batch of one row):
    causal attention within each ``[cu[i], cu[i+1])``; else SDPA as transformers runs it."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        raise ValueError(f"packed attention takes one row without cache (query {tuple(query.shape)}, "
                         f"key {tuple(key.shape)})")
    groups = query.shape[1] // key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(f"cu_seq_lens {bounds[:3]}...{bounds[-1:]} do not cover the {query.shape[2]} tokens")
    drop = dropout if module.training else 0.0
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        k = _repeat_kv(key[:, :, start:end], groups)
        v = _repeat_kv(value[:, :, start:end], groups)
        outs.append(F.scaled_dot_product_attention(query[:, :, start:end], k, v, dropout_p=drop, is_causal=True,
                                                   scale=scaling))
    out = torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask for packed rows (their boundaries travel as ``cu_seq_lens``); SDPA's padding mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN, varlen_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, varlen_mask)


def packed_attention(explicit: str | None) -> str:
    """The LLM attention for packed training: ``explicit`` (``--attn_implementation``) when given, else
    flash-attention's varlen path where flash-attn and CUDA are present, else ``internvl_varlen``."""
    if explicit:
        return explicit
    from internvl.model.llm import attn_implementation

    default = attn_implementation()
    return default if default in FLASH else VARLEN


__all__ = ["FLASH", "VARLEN", "packed_attention", "varlen_attention_forward"]
