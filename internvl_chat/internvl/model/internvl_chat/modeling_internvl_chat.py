"""``InternVLChatModel``: vision tower(s) + ``language_model`` with InternVL's semantics.

* The primary tower is ``vision_model`` + ``mlp1`` (InternVL's names: an original checkpoint loads, saves and exports
  unchanged); ``vision_towers[kind]`` holds one more ``vision_model`` + ``mlp1`` per extra media kind the config
  names (``InternVLChatConfig.vision_towers``). Any registered encoder and projector can sit in any tower.
* The model never builds prompts from rows: ``internvl.data.processor`` does, once, for training, evaluation and
  chat. The model scatters each item's projected tokens, in prompt order, into the ``<IMG_CONTEXT>`` positions of
  ``input_ids`` and checks the count: a mismatch raises, it is never a silently zeroed loss.
* ``pixel_values`` is InternVL's ``Tensor``/list of primary-tower items (with ``image_flags``, 0 for dummy items), or
  a dict ``{kind: items}`` with ``item_kinds`` (each item's kind, in prompt order) for several towers.
* While training, every tower runs on every step: a tower with no item in the batch runs its encoder's
  ``dummy_input`` and adds it times zero, in a fixed tower order, so ZeRO-3 and DDP never hang when a rank's batch
  lacks a kind.
* ``chat`` / ``batch_chat`` / ``generate`` keep InternVL's signatures (images on the primary tower); the prompt text
  comes from ``internvl.prompt``, the same code that renders training prompts.
* Loading and saving (three checkpoint layouts) live in ``internvl.model.checkpoint``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from internvl.constants import IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN
from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.llm import build_llm, llm_lora_targets, logits_are_lm_head
from internvl.model.loss import causal_lm_loss
from internvl.model import varlen_attention  # noqa: F401  (registers the packed attention implementation)
from internvl.model.projector import create_projector
from internvl.model.vision.base import encoder_class
from internvl.prompt import encode_generation_prompt, generation_prompt
from internvl.errors import ConfigError

logger = logging.getLogger(__name__)


def _items(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else list(x.unbind(0))


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a peft wrapper (or the module itself)."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


class VisionTower(nn.Module):
    """One extra tower: an encoder and its projector, under InternVL's attribute names."""

    def __init__(self, config: InternVLChatConfig, vision_model=None):
        super().__init__()
        self.vision_model = vision_model or encoder_class(config.vision_config)(config.vision_config)
        self.mlp1 = create_projector(config)


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["InternVLVisionLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer", "Phi3DecoderLayer",
                         "Qwen3DecoderLayer"]

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, towers=None):
        super().__init__(config)
        self.template = config.template
        self.select_layer = config.select_layer
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.vision_model = vision_model or encoder_class(config.vision_config)(config.vision_config)
        self.language_model = language_model or build_llm(config.llm_config)
        self.mlp1 = create_projector(config)
        towers = towers or {}
        self.vision_towers = nn.ModuleDict({kind: VisionTower(config.tower(kind), towers.get(kind))
                                            for kind in config.vision_towers})
        self.img_context_token_id = None
        self.system_message = getattr(config, "system_message", None)
        self.post_init()

    def _init_weights(self, module):  # sub-modules initialise themselves; weights are loaded afterwards
        return

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    # ------------------------------------------------------------------ vision path
    def vision_encoders(self, unwrap: bool = False) -> dict[str | None, nn.Module]:
        """Tower name (``None`` = primary) -> its encoder module (peft-wrapped when backbone LoRA is on, unless
        ``unwrap``)."""
        out: dict[str | None, nn.Module] = {None: self.vision_model}
        out.update({kind: tower.vision_model for kind, tower in self.vision_towers.items()})
        return {k: _unwrap(v) for k, v in out.items()} if unwrap else out

    def projectors(self) -> dict[str | None, nn.Module]:
        out: dict[str | None, nn.Module] = {None: self.mlp1}
        out.update({kind: tower.mlp1 for kind, tower in self.vision_towers.items()})
        return out

    def extract_feature(self, pixel_values, kind: str | None = None):
        """Features of one tower's items through its projector: ``Tensor [N, K, D_llm]`` or a list of
        ``[K_i, D_llm]``. ``kind`` picks the tower that reads it (``None``: the primary)."""
        tower = self.config.tower_of(kind)
        encoder, projector = self.vision_encoders()[tower], self.projectors()[tower]
        dtype = next(encoder.parameters()).dtype
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = [p.to(dtype) if p.is_floating_point() else p for p in pixel_values]
        elif pixel_values.is_floating_point():
            pixel_values = pixel_values.to(dtype)
        return projector(encoder(pixel_values))

    def _dummy_zero(self, tower: str | None, device) -> torch.Tensor:
        """A tower run on its encoder's dummy item, times zero (keeps every tower in the graph)."""
        vc = self.config.tower(tower).vision_config
        dummy = encoder_class(vc).dummy_input(vc).unsqueeze(0).to(device)
        return self.extract_feature(dummy, tower).float().sum() * 0.0

    def _vision_embeds(self, pixel_values, image_flags, item_kinds) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened embeddings of the real items in prompt order, and a zero scalar tied to every unused tower."""
        device = self.language_model.get_input_embeddings().weight.device
        zero = torch.zeros((), device=device)
        if isinstance(pixel_values, dict):
            by_kind = {kind: items for kind, items in pixel_values.items() if len(items)}
            flags = image_flags if isinstance(image_flags, dict) else {}
            order = list(item_kinds) if item_kinds is not None else []
            if item_kinds is None and len(by_kind) > 1:
                raise ValueError("pixel_values holds several kinds but no item_kinds gives their prompt order")
        else:
            by_kind = {None: pixel_values} if pixel_values is not None and len(pixel_values) else {}
            flags = {None: image_flags} if image_flags is not None else {}
            order = None
        feats: dict[Any, list[torch.Tensor]] = {}
        towers_in_order = [None] + sorted(self.vision_towers)
        for tower in towers_in_order:  # a fixed order and one call per tower, so every rank calls them alike
            kinds_here = [k for k in by_kind if self.config.tower_of(k) == tower]
            if not kinds_here:
                if self.training and torch.is_grad_enabled():
                    zero = zero + self._dummy_zero(tower, device)
                continue
            parts = [_items(by_kind[k]) for k in kinds_here]
            joined = [it for part in parts for it in part]
            same = all(it.shape == joined[0].shape for it in joined)
            out = _items(self.extract_feature(torch.stack(joined) if same else joined, kinds_here[0]))
            start = 0
            for kind, part in zip(kinds_here, parts):
                mine, start = out[start:start + len(part)], start + len(part)
                keep = flags.get(kind)
                keep = [1] * len(mine) if keep is None else keep.reshape(-1).tolist()
                if len(keep) != len(mine):
                    raise ValueError(f"image_flags has {len(keep)} entries for {len(mine)} {kind or 'vision'} items")
                feats[kind] = [f for f, k in zip(mine, keep) if k]
                zero = zero + sum((f.float().sum() * 0.0 for f, k in zip(mine, keep) if not k), zero)
        if order is None:
            real = feats.get(None, [])
        else:
            queues = {k: list(v) for k, v in feats.items()}
            try:
                real = [queues[k].pop(0) for k in order]
            except (KeyError, IndexError) as exc:
                raise ValueError(f"item_kinds {order} do not match the items given per kind "
                                 f"{ {k: len(v) for k, v in feats.items()} }") from exc
            if any(queues.values()):
                raise ValueError(f"item_kinds {order} leave items unused: { {k: len(v) for k, v in queues.items()} }")
        width = self.language_model.get_input_embeddings().weight.shape[-1]
        flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in real]) if real else zero.new_zeros((0, width))
        return flat, zero

    def _merge(self, input_ids: torch.Tensor, pixel_values, image_flags=None, visual_features=None,
               item_kinds=None) -> torch.Tensor:
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is None and visual_features is None and not (self.training and torch.is_grad_enabled()):
            return embeds
        if visual_features is not None:
            flat, zero = torch.cat([v.reshape(-1, v.shape[-1]) for v in _items(visual_features)]), 0.0
        else:
            flat, zero = self._vision_embeds(pixel_values, image_flags, item_kinds)
        if self.img_context_token_id is None:
            raise RuntimeError("img_context_token_id is not set: model.img_context_token_id = "
                               "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')")
        selected = input_ids == self.img_context_token_id
        n_tokens = int(selected.sum())
        if n_tokens != flat.shape[0]:
            raise ValueError(f"{n_tokens} <IMG_CONTEXT> tokens in input_ids but {flat.shape[0]} vision embeddings; "
                             "the prompt's image-token runs do not match the media items")
        if n_tokens:
            embeds = embeds.masked_scatter(selected.unsqueeze(-1), flat.to(embeds.dtype))
        return embeds + zero.to(embeds.dtype)

    # ------------------------------------------------------------------ training forward
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, item_kinds=None, loss_weight=None,
                loss_reduction_all_gather: bool = False, num_items_in_batch=None, cu_seq_lens_q=None,
                cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs) -> CausalLMOutputWithPast:
        """InternVL's forward. Packed rows (``internvl.train.packing``) come with ``cu_seq_lens_q/k`` and
        ``max_length_q/k``: the LLM then gets no ``attention_mask`` and attends within each sample
        (``internvl.model.varlen_attention``). The loss is ``internvl.model.loss.causal_lm_loss`` (optional
        per-token ``loss_weight``, InternVL's ``sample``/``square`` reductions).

        A training step (training mode, gradients on, ``labels`` given, no hidden states or attentions asked for)
        runs the LLM's decoder and applies its head only at the positions that have a target: ``logits`` is then
        ``None`` (as Liger's fused linear cross-entropy), and the loss and gradients are those of the full
        logits. Evaluation and generation get the full logits."""
        embeds = self._merge(input_ids, pixel_values, image_flags, item_kinds=item_kinds)
        lm_kwargs = {k: v for k, v in kwargs.items() if k == "logits_to_keep"}
        if cu_seq_lens_q is not None:
            attention_mask = None
            lm_kwargs.update(cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
                             max_length_k=max_length_k)
        loss_kwargs = dict(loss_weight=loss_weight, num_items_in_batch=num_items_in_batch,
                           all_gather=loss_reduction_all_gather)
        lm = self.language_model
        if (labels is not None and self.training and torch.is_grad_enabled() and not output_hidden_states
                and not output_attentions and past_key_values is None and logits_are_lm_head(lm.config)):
            lm_kwargs.pop("logits_to_keep", None)
            hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      use_cache=False, return_dict=True, **lm_kwargs).last_hidden_state
            loss = causal_lm_loss(hidden, labels, lm_head=lm.get_output_embeddings(), **loss_kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=None)
        out = lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                 past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
                 output_hidden_states=output_hidden_states, return_dict=True, **lm_kwargs)
        if labels is not None:
            out.loss = causal_lm_loss(out.logits, labels, **loss_kwargs)
        return out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config: GenerationConfig | None = None, output_hidden_states=None, image_flags=None,
                 item_kinds=None, **generate_kwargs):
        embeds = self._merge(input_ids, pixel_values, image_flags, visual_features, item_kinds=item_kinds)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                            generation_config=generation_config,
                                            output_hidden_states=output_hidden_states, use_cache=True,
                                            **generate_kwargs)

    def stop_token_id(self, tokenizer) -> int:
        """The template's end token (generation stops on it); an error if it is not one token."""
        from internvl.conversation import get_conv_template

        stop = get_conv_template(self.template).end_token
        token_id = tokenizer.convert_tokens_to_ids(stop)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"template {self.template!r} stops on {stop!r}, which is not one token of this tokenizer")
        return token_id

    def generate_text(self, tokenizer, prompts: list[list[int]], generation_config: dict, pixel_values=None,
                      item_kinds=None) -> list[str]:
        """The one generation engine: prompt ids (one list per answer, as ``internvl.prompt`` encodes them) and
        their items -> answers. Left padding; stops on the template's end token; text cut at it."""
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        stop_id = self.stop_token_id(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        device = self.language_model.get_input_embeddings().weight.device
        gen = dict(generation_config)
        gen["eos_token_id"] = stop_id
        gen.setdefault("pad_token_id", pad_id)
        if gen["pad_token_id"] is None:
            gen["pad_token_id"] = pad_id
        output = self.generate(pixel_values=_to_device(pixel_values, device), input_ids=ids.to(device),
                               attention_mask=mask.to(device), item_kinds=item_kinds, **gen)
        stop = tokenizer.convert_ids_to_tokens(stop_id)
        return [r.split(stop)[0].strip() for r in tokenizer.batch_decode(output, skip_special_tokens=True)]

    def _prompt_ids(self, tokenizer, question: str, items: list[torch.Tensor], num_patches_list: list[int],
                    history=(), system: str | None = None) -> list[int]:
        if sum(num_patches_list) != len(items):
            raise ValueError(f"num_patches_list sums to {sum(num_patches_list)} but {len(items)} items were given")
        counts, start = [], 0
        for n in num_patches_list:
            counts.append(sum(self.config.num_context_tokens(it) for it in items[start:start + n]))
            start += n
        prompt = generation_prompt(self.template, question, counts, history=history,
                                   system=system if system is not None else self.system_message)
        return encode_generation_prompt(tokenizer, prompt)

    def chat(self, tokenizer, pixel_values, question: str, generation_config: dict, history=None,
             return_history: bool = False, num_patches_list=None, verbose: bool = False, system: str | None = None,
             **_):
        """InternVL's ``chat``: items of the primary tower (images) for the ``<image>`` placeholders of the history
        and the question; one ``<image>`` is put in front of a first question that has none."""
        items = _items(pixel_values) if pixel_values is not None else []
        if not history and items and IMAGE_PLACEHOLDER not in question:
            question = IMAGE_PLACEHOLDER + "\n" + question
        if num_patches_list is None:
            num_patches_list = [len(items)] if items else []
        history = [] if history is None else history
        prompt = self._prompt_ids(tokenizer, question, items, list(num_patches_list), history, system)
        if verbose:
            logger.info("prompt: %s", tokenizer.decode(prompt))
        response = self.generate_text(tokenizer, [prompt], generation_config, pixel_values=pixel_values)[0]
        history.append((question, response))
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions: list[str], generation_config: dict,
                   num_patches_list=None, history=None, return_history: bool = False, image_counts=None,
                   verbose: bool = False, **_):
        """One answer per question; left padding; ``num_patches_list[i]`` items belong to question i
        (or, with ``image_counts``, question i has ``image_counts[i]`` placeholders)."""
        if history is not None or return_history:
            raise NotImplementedError("batch_chat does not support history (as in InternVL); use chat()")
        items = _items(pixel_values) if pixel_values is not None else []
        counts = image_counts or [1 if num_patches_list else 0] * len(questions)
        num_patches_list = list(num_patches_list or [])
        prompts, start, img = [], 0, 0
        for question, n_img in zip(questions, counts):
            if n_img and IMAGE_PLACEHOLDER not in question:
                question = IMAGE_PLACEHOLDER + "\n" + question
            patches = num_patches_list[img:img + n_img]
            n_items = sum(patches)
            prompts.append(self._prompt_ids(tokenizer, question, items[start:start + n_items], patches))
            start, img = start + n_items, img + n_img
        return self.generate_text(tokenizer, prompts, generation_config, pixel_values=pixel_values if items else None)

    # ------------------------------------------------------------------ LoRA (peft), InternVL's recipe
    def wrap_llm_lora(self, r: int = 128, lora_alpha: int | None = None, lora_dropout: float = 0.05):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=lora_alpha or 2 * r, lora_dropout=lora_dropout, task_type="CAUSAL_LM",
                         target_modules=llm_lora_targets(self.config.llm_config))
        self.language_model = get_peft_model(self.language_model, cfg)
        self.language_model.enable_input_require_grads()
        self.config.use_llm_lora = r

    def wrap_backbone_lora(self, r: int = 128, lora_alpha: int | None = None, lora_dropout: float = 0.05):
        """LoRA on every tower's encoder (its declared ``lora_target_modules``; ``lora_modules_to_save`` train in
        full). An encoder that declares no targets cannot take backbone LoRA: a ``ValueError`` says what to use."""
        from peft import LoraConfig, get_peft_model

        for tower, encoder in self.vision_encoders().items():
            targets = encoder.lora_target_modules
            if not targets:
                raise ConfigError(f"--use_backbone_lora: encoder {encoder.config.encoder_name!r} declares no LoRA "
                                 f"target modules; train it in full (--freeze_backbone False) or freeze it")
            cfg = LoraConfig(r=r, lora_alpha=lora_alpha or 2 * r, lora_dropout=lora_dropout,
                             target_modules=targets, modules_to_save=encoder.lora_modules_to_save)
            wrapped = get_peft_model(encoder, cfg)
            if tower is None:
                self.vision_model = wrapped
            else:
                self.vision_towers[tower].vision_model = wrapped
        self.config.use_backbone_lora = r

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, *args, dtype=None, torch_dtype=None, device_map=None, **kwargs):
        """Load an InternVL checkpoint: original OpenGVLab layout, transformers-native ``-hf``, or ours."""
        from internvl.model.checkpoint import load_model

        return load_model(cls, str(path), dtype=dtype or torch_dtype, device=device_map, **kwargs)

    def save_pretrained(self, save_directory, state_dict=None, safe_serialization=True, **kwargs):
        from internvl.model.checkpoint import save_model

        save_model(self, str(save_directory), state_dict=state_dict, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts the on-disk layout as well as the in-memory one (so HF Trainer's resume loads our files)."""
        from internvl.model.checkpoint import state_from_disk

        return super().load_state_dict(state_from_disk(self, dict(state_dict)), strict=strict, assign=assign)


def _to_device(pixel_values, device):
    if pixel_values is None:
        return None
    if isinstance(pixel_values, dict):
        return {k: _to_device(v, device) for k, v in pixel_values.items()}
    if isinstance(pixel_values, (list, tuple)):
        return [p.to(device) for p in pixel_values]
    return pixel_values.to(device)
