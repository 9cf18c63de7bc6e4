"""Brainfound stage-2 model: scan-report contrastive learning (MoCo-style) plus report captioning.

Vision: each slice goes through the ``brainfound_unet`` down path at t = 0 and the first conv of its feature head
(conv3x3 512->768, ReLU, global average): a 768-d slice embedding (Brainfound's stage-2 slice embedding; sharing the
conv means stage 3 starts with it trained). A small transformer over the slices (learned [CLS] token and slice
positions, pre-norm) gives the scan embedding; an MLP projects it to the joint space. Text: a transformers encoder,
mean-pooled over the attention mask, then an MLP.

Loss (image-text contrastive, ITC): similarities of the online scan/report embeddings against the momentum
encoders' keys of the whole (all-rank) batch plus a queue of earlier keys, over a learnable temperature
(init 0.07, clamped to [0.001, 0.5]); cross-entropy towards the matching pair, both directions, averaged. The
momentum encoders (vision, fusion, projections, text) follow the online ones with momentum 0.996 and are never
trained by gradient; after each step the batch's keys replace the oldest queue entries.

Captioning (``caption: true``, the default): the fusion transformer's output tokens ([CLS] + one per slice) are
projected to the text width (``scan_proj``) and a BERT decoder (``patches.brainfound.caption``) cross-attends to
them while writing the report; its LM loss is added to the ITC loss with weight ``lm_weight``. Word embeddings are
the text encoder's; ``tie_text_encoder_decoder`` shares every other matching weight too. ``generate_reports``
decodes with beam search (``beam_size``, ``decode_max_length``, no immediate token repeats).

Not reproduced from Brainfound's stage 2: its image-image slice/scan contrast.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from patches.brainfound.text import mean_pool


@dataclass
class ClipConfig:
    embed_dim: int = 256
    fusion_layers: int = 2
    fusion_heads: int = 8
    max_slices: int = 64
    momentum: float = 0.996
    queue_size: int = 4096
    temperature: float = 0.07
    text_max_length: int = 128
    caption: bool = True
    lm_weight: float = 1.0
    decoder_layers: int | None = None  # None: as many as the text encoder (required when tied)
    tie_text_encoder_decoder: bool = False
    beam_size: int = 3
    decode_max_length: int = 40

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(d_in: int, d_out: int, batch_norm: bool = False) -> nn.Sequential:
    """Linear -> [BatchNorm] -> ReLU -> Linear. The vision head uses BatchNorm (as MoCo v3's heads do): the batch
    statistics take out what all scans share, so the small between-scan differences of the UNet features drive the
    loss from the first step; without it the tiny runs collapse to one embedding. Text features differ enough."""
    mid = [nn.BatchNorm1d(d_in)] if batch_norm else []
    return nn.Sequential(nn.Linear(d_in, d_in), *mid, nn.ReLU(), nn.Linear(d_in, d_out))


class SliceFusion(nn.Module):
    """``[B, S, W]`` slice embeddings -> ``[B, W]`` scan embedding (transformer over slices, [CLS] output)."""

    def __init__(self, width: int, layers: int, heads: int, max_slices: int):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, max_slices + 1, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, W]`` -> ``[B, S + 1, W]``: the [CLS] (scan) token, then one token per slice."""
        if x.shape[1] + 1 > self.pos.shape[1]:
            raise ValueError(f"{x.shape[1]} slices exceed max_slices={self.pos.shape[1] - 1}")
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos[:, :x.shape[1] + 1]
        return self.norm(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]


class BrainfoundCLIP(nn.Module):
    def __init__(self, vision: nn.Module, text_model: nn.Module, cfg: ClipConfig, with_momentum: bool = True):
        super().__init__()
        self.cfg = cfg
        width, t_width = vision.config.head_channels, text_model.config.hidden_size
        self.vision = vision
        for unused in (vision.head.norm, vision.head.conv2):  # stage-3 part of the head: not trained here
            unused.requires_grad_(False)
        self.fusion = SliceFusion(width, cfg.fusion_layers, cfg.fusion_heads, cfg.max_slices)
        self.vision_proj = _mlp(width, cfg.embed_dim, batch_norm=True)
        self.text = text_model
        self.text_proj = _mlp(t_width, cfg.embed_dim, batch_norm=True)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temperature)))
        if cfg.caption:
            from patches.brainfound.caption import build_decoder, tie_decoder

            self.scan_proj = nn.Linear(width, t_width)
            self.decoder = build_decoder(text_model, cfg.decoder_layers)
            tie_decoder(self.decoder, text_model, full=cfg.tie_text_encoder_decoder)
        self.pairs = ["vision", "fusion", "vision_proj", "text", "text_proj"]
        if not with_momentum:  # inference (zero-shot): online encoders only
            return
        for name in self.pairs:
            twin = copy.deepcopy(getattr(self, name))
            twin.requires_grad_(False)
            setattr(self, f"{name}_m", twin)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.queue_size, cfg.embed_dim, generator=g), dim=1))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.queue_size, cfg.embed_dim, generator=g), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ encoders
    @staticmethod
    def _fused(vision, fusion, pixel_values: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Scans ``[B, S, 3, H, W]`` -> fusion tokens ``[B, S + 1, W]`` ([CLS] first)."""
        b, s = pixel_values.shape[:2]
        slices = pixel_values.flatten(0, 1)
        mods = modality.to(slices.device).repeat_interleave(s)
        emb = vision.slice_embedding(slices, mods).reshape(b, s, -1)
        return fusion.tokens(emb.float())

    def _image(self, vision, fusion, proj, pixel_values: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return F.normalize(proj(self._fused(vision, fusion, pixel_values, modality)[:, 0]), dim=-1)

    def _text(self, text, proj, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(proj(mean_pool(hidden.float(), attention_mask)), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Scans ``[B, S, 3, H, W]`` -> unit embeddings ``[B, E]`` (online encoder)."""
        return self._image(self.vision, self.fusion, self.vision_proj, pixel_values, modality)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._text(self.text, self.text_proj, input_ids, attention_mask)

    def scan_tokens(self, pixel_values: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """What the captioning decoder cross-attends to: projected fusion tokens ``[B, S + 1, text width]``."""
        return self.scan_proj(self._fused(self.vision, self.fusion, pixel_values, modality))

    @torch.no_grad()
    def generate_reports(self, pixel_values: torch.Tensor, modality: torch.Tensor, tok,
                         beam_size: int | None = None, max_length: int | None = None) -> list[str]:
        """Reports for scans ``[B, S, 3, H, W]`` (beam search; the config's settings unless given)."""
        from patches.brainfound.caption import decode_text, generate_reports

        if not self.cfg.caption:
            raise ValueError("this stage-2 model has no captioning decoder (clip.caption: false)")
        ids = generate_reports(self.decoder, self.scan_tokens(pixel_values, modality), bos_id=tok.cls_token_id,
                               eos_id=tok.sep_token_id, pad_id=tok.pad_token_id,
                               beam_size=int(beam_size or self.cfg.beam_size),
                               max_length=int(max_length or self.cfg.decode_max_length))
        return decode_text(tok, ids)

    # ------------------------------------------------------------------ MoCo machinery
    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.cfg.momentum
        for name in self.pairs:
            online, twin = getattr(self, name), getattr(self, f"{name}_m")
            for p, pm in zip(online.parameters(), twin.parameters()):
                pm.mul_(m).add_(p.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, image_keys: torch.Tensor, text_keys: torch.Tensor) -> None:
        n, q = image_keys.shape[0], self.image_queue.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(n, device=image_keys.device)) % q
        self.image_queue[idx] = image_keys.to(self.image_queue.dtype)
        self.text_queue[idx] = text_keys.to(self.text_queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % q)

    def forward(self, pixel_values: torch.Tensor, modality: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                rank: int = 0) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        fused = self._fused(self.vision, self.fusion, pixel_values, modality)
        img_q = F.normalize(self.vision_proj(fused[:, 0]), dim=-1)
        txt_q = self.encode_text(input_ids, attention_mask)
        with torch.no_grad():
            self.momentum_update()
            img_k = self._image(self.vision_m, self.fusion_m, self.vision_proj_m, pixel_values, modality)
            txt_k = self._text(self.text_m, self.text_proj_m, input_ids, attention_mask)
            img_all, txt_all = gather(img_k.contiguous()), gather(txt_k.contiguous())
            img_bank = torch.cat([img_all, self.image_queue.clone()])
            txt_bank = torch.cat([txt_all, self.text_queue.clone()])
        sim_i2t = img_q @ txt_bank.t() / self.temp
        sim_t2i = txt_q @ img_bank.t() / self.temp
        target = torch.arange(img_q.shape[0], device=img_q.device) + rank * img_q.shape[0]
        itc = (F.cross_entropy(sim_i2t, target) + F.cross_entropy(sim_t2i, target)) / 2
        self.enqueue(img_all, txt_all)
        with torch.no_grad():
            acc = (sim_i2t.argmax(1) == target).float().mean()
        out = {"loss": itc, "itc_loss": itc.detach(), "itc_acc": acc, "temp": self.temp.detach()}
        if self.cfg.caption:
            from patches.brainfound.caption import caption_labels

            lm = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                              encoder_hidden_states=self.scan_proj(fused),
                              labels=caption_labels(input_ids, attention_mask)).loss
            out.update(loss=itc + self.cfg.lm_weight * lm, lm_loss=lm.detach())
        return out

    # ------------------------------------------------------------------ export
    @property
    def heads(self) -> tuple[str, ...]:
        return ("fusion", "vision_proj", "text_proj") + (("scan_proj", "decoder") if self.cfg.caption else ())

    def head_state(self) -> dict[str, torch.Tensor]:
        """What zero-shot and report generation need besides the encoders: fusion, projections, the captioning
        decoder (tied tensors included as copies), temperature (online side)."""
        out = {f"{h}.{k}": v.detach().clone() for h in self.heads for k, v in getattr(self, h).state_dict().items()}
        out["temp"] = self.temp.detach()
        return out

    def load_head_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        expected = set(self.head_state())
        if set(state) != expected:
            raise ValueError(f"{where}: head weights do not match the config: missing "
                             f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        for h in self.heads:
            getattr(self, h).load_state_dict({k[len(h) + 1:]: v for k, v in state.items() if k.startswith(h + ".")})
        with torch.no_grad():
            self.temp.copy_(state["temp"])
