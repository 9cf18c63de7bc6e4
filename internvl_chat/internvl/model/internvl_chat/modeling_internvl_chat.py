"""``InternVLChatModel``: ``vision_model`` + ``mlp1`` + ``language_model`` with InternVL's semantics.

* ``vision_model`` is whatever encoder the config names (``intern_vit`` by default, any registered plugin
  encoder otherwise); ``mlp1`` is the registered projector (InternVL's pixel-shuffle MLP by default).
* Each item's projected tokens are written, in order, into the ``<IMG_CONTEXT>`` positions of ``input_ids``;
  items with ``image_flags == 0`` (dummies for text-only samples) are computed and multiplied by zero, so every
  rank runs the vision path (ZeRO-3 and DDP never hang on mixed batches). A token/feature count mismatch raises:
  the dataset sizes the ``<IMG_CONTEXT>`` runs, so a mismatch is a bug, never a silently zeroed loss.
* ``chat`` / ``batch_chat`` / ``generate`` keep InternVL's signatures.
* Loading and saving (three checkpoint layouts) live in ``internvl.model.checkpoint``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.llm import build_llm, llm_lora_targets
from internvl.model.projector import create_projector

logger = logging.getLogger(__name__)

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = "<img>", "</img>", "<IMG_CONTEXT>"


def _items(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else list(x.unbind(0))


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["InternVLVisionLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer", "Phi3DecoderLayer",
                         "Qwen3DecoderLayer"]

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None):
        super().__init__(config)
        self.template = config.template
        self.select_layer = config.select_layer
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.vision_model = vision_model or config.vision_encoder_class(config.vision_config)
        self.language_model = language_model or build_llm(config.llm_config)
        self.mlp1 = create_projector(config)
        self.img_context_token_id = None
        self.system_message = getattr(config, "system_message", None)
        self.post_init()

    def _init_weights(self, module):  # sub-modules initialise themselves; weights are loaded afterwards
        return

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    def floating_point_ops(self, inputs: dict, exclude_embeddings: bool = True) -> int:
        """Trainer's FLOP estimate, counted from the text tokens (``pixel_values`` may be a list of items)."""
        ids = inputs.get("input_ids")
        tokens = int(ids.numel()) if ids is not None else 0
        return 6 * tokens * self.num_parameters(exclude_embeddings=exclude_embeddings)

    # ------------------------------------------------------------------ vision path
    def extract_feature(self, pixel_values):
        """Encoder features through the projector: ``Tensor [N, K, D_llm]`` or a list of ``[K_i, D_llm]``."""
        dtype = next(self.vision_model.parameters()).dtype
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = [p.to(dtype) if p.is_floating_point() else p for p in pixel_values]
        elif pixel_values.is_floating_point():
            pixel_values = pixel_values.to(dtype)
        return self.mlp1(self.vision_model(pixel_values))

    def _vision_embeds(self, pixel_values, image_flags) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened embeddings of the real items in order, and a zero scalar tied to the dummies' graph."""
        feats = _items(self.extract_feature(pixel_values))
        if image_flags is None:
            flags = [1] * len(feats)
        else:
            flags = image_flags.reshape(-1).tolist()
            if len(flags) != len(feats):
                raise ValueError(f"image_flags has {len(flags)} entries for {len(feats)} vision items")
        real = [f.reshape(-1, f.shape[-1]) for f, keep in zip(feats, flags) if keep]
        zero = sum((f.sum() * 0.0 for f, keep in zip(feats, flags) if not keep), torch.zeros((), device=feats[0].device))
        width = feats[0].shape[-1]
        flat = torch.cat(real) if real else feats[0].new_zeros((0, width))
        return flat, zero

    def _merge(self, input_ids: torch.Tensor, pixel_values, image_flags=None, visual_features=None) -> torch.Tensor:
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is None and visual_features is None:
            return embeds
        if visual_features is not None:
            flat, zero = torch.cat([v.reshape(-1, v.shape[-1]) for v in _items(visual_features)]), 0.0
        else:
            flat, zero = self._vision_embeds(pixel_values, image_flags)
        if self.img_context_token_id is None:
            raise RuntimeError("img_context_token_id is not set: model.img_context_token_id = "
                               "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')")
        selected = input_ids == self.img_context_token_id
        n_tokens = int(selected.sum())
        if n_tokens != flat.shape[0]:
            raise ValueError(f"{n_tokens} <IMG_CONTEXT> tokens in input_ids but {flat.shape[0]} vision embeddings; "
                             "the prompt's image-token runs do not match the media items")
        embeds = embeds.masked_scatter(selected.unsqueeze(-1), flat.to(embeds.dtype))
        return embeds + zero

    # ------------------------------------------------------------------ training forward
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs) -> CausalLMOutputWithPast:
        embeds = self._merge(input_ids, pixel_values, image_flags)
        lm_kwargs = {k: v for k, v in kwargs.items() if k in ("num_items_in_batch", "logits_to_keep")}
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, labels=labels, use_cache=use_cache,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                   return_dict=True, **lm_kwargs)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config: GenerationConfig | None = None, output_hidden_states=None, image_flags=None,
                 **generate_kwargs):
        embeds = self._merge(input_ids, pixel_values, image_flags, visual_features)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                            generation_config=generation_config,
                                            output_hidden_states=output_hidden_states, use_cache=True,
                                            **generate_kwargs)

    def _conversation(self):
        from internvl.conversation import get_conv_template

        template = get_conv_template(self.template)
        if self.system_message is not None:
            template.system_message = self.system_message
        return template

    def _image_block(self, items: list[torch.Tensor]) -> str:
        from internvl.media import token_count

        n = sum(token_count(self.config, item) for item in items)
        return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * n + IMG_END_TOKEN

    def _expand_query(self, query: str, pixel_values, num_patches_list: list[int]) -> str:
        items = _items(pixel_values) if pixel_values is not None else []
        if sum(num_patches_list) != len(items):
            raise ValueError(f"num_patches_list sums to {sum(num_patches_list)} but {len(items)} items were given")
        if query.count("<image>") != len(num_patches_list):
            raise ValueError(f"the prompt has {query.count('<image>')} <image> placeholders for "
                             f"{len(num_patches_list)} images")
        start = 0
        for n in num_patches_list:
            query = query.replace("<image>", self._image_block(items[start:start + n]), 1)
            start += n
        return query

    def _stop_token_id(self, tokenizer, template) -> int:
        stop = template.sep.strip()
        token_id = tokenizer.convert_tokens_to_ids(stop)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"template {self.template!r} stops on {stop!r}, which is not one token of this tokenizer")
        return token_id

    def chat(self, tokenizer, pixel_values, question: str, generation_config: dict, history=None,
             return_history: bool = False, num_patches_list=None, verbose: bool = False, **_):
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [len(_items(pixel_values))] if pixel_values is not None else []
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        template = self._conversation()
        stop_id = self._stop_token_id(tokenizer, template)
        history = [] if history is None else history
        for old_q, old_a in history:
            template.append_message(template.roles[0], old_q)
            template.append_message(template.roles[1], old_a)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = self._expand_query(template.get_prompt(), pixel_values, num_patches_list)
        if verbose:
            logger.info("query: %s", query)
        inputs = tokenizer(query, return_tensors="pt")
        device = self.language_model.get_input_embeddings().weight.device
        gen = dict(generation_config)
        gen["eos_token_id"] = stop_id
        if gen.get("pad_token_id") is None:
            gen["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
        pv = _to_device(pixel_values, device)
        output = self.generate(pixel_values=pv, input_ids=inputs["input_ids"].to(device),
                               attention_mask=inputs["attention_mask"].to(device), **gen)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history.append((question, response))
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions: list[str], generation_config: dict,
                   num_patches_list=None, history=None, return_history: bool = False, image_counts=None,
                   verbose: bool = False, **_):
        """One answer per question; left padding; ``num_patches_list[i]`` items belong to question i
        (or, with ``image_counts``, question i has ``image_counts[i]`` placeholders)."""
        if history is not None or return_history:
            raise NotImplementedError("batch_chat does not support history (as in InternVL); use chat()")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        items = _items(pixel_values) if pixel_values is not None else []
        counts = image_counts or [1 if num_patches_list else 0] * len(questions)
        num_patches_list = list(num_patches_list or [])
        queries, start, img = [], 0, 0
        template = None
        for question, n_img in zip(questions, counts):
            if n_img and "<image>" not in question:
                question = "<image>\n" + question
            template = self._conversation()
            template.append_message(template.roles[0], question)
            template.append_message(template.roles[1], None)
            patches = num_patches_list[img:img + n_img]
            n_items = sum(patches)
            own_items = items[start:start + n_items] if n_items else None
            queries.append(self._expand_query(template.get_prompt(), own_items, patches))
            start, img = start + n_items, img + n_img
        stop_id = self._stop_token_id(tokenizer, template)
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = tokenizer(queries, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        device = self.language_model.get_input_embeddings().weight.device
        gen = dict(generation_config)
        gen["eos_token_id"] = stop_id
        if gen.get("pad_token_id") is None:
            gen["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
        output = self.generate(pixel_values=_to_device(pixel_values, device) if items else None,
                               input_ids=inputs["input_ids"].to(device),
                               attention_mask=inputs["attention_mask"].to(device), **gen)
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [r.split(template.sep.strip())[0].strip() for r in responses]

    # ------------------------------------------------------------------ LoRA (peft), InternVL's recipe
    def wrap_llm_lora(self, r: int = 128, lora_alpha: int | None = None, lora_dropout: float = 0.05):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=lora_alpha or 2 * r, lora_dropout=lora_dropout, task_type="CAUSAL_LM",
                         target_modules=llm_lora_targets(self.config.llm_config))
        self.language_model = get_peft_model(self.language_model, cfg)
        self.language_model.enable_input_require_grads()
        self.config.use_llm_lora = r

    def wrap_backbone_lora(self, r: int = 128, lora_alpha: int | None = None, lora_dropout: float = 0.05):
        from peft import LoraConfig, get_peft_model

        # an encoder may name new, randomly initialised parts (e.g. a feature head) that must train in full
        cfg = LoraConfig(r=r, lora_alpha=lora_alpha or 2 * r, lora_dropout=lora_dropout,
                         target_modules=self.vision_model.lora_target_modules,
                         modules_to_save=getattr(self.vision_model, "lora_modules_to_save", None))
        self.vision_model = get_peft_model(self.vision_model, cfg)
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
    if isinstance(pixel_values, (list, tuple)):
        return [p.to(device) for p in pixel_values]
    return pixel_values.to(device)
