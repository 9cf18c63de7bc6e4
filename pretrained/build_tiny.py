"""Build the embedded tiny default, offline and in seconds: ``pretrained/InternVL-tiny/``.

A tiny InternVL-architecture model (a 2-layer InternViT at 112 px, InternVL's pixel-shuffle ``mlp1`` and a
2-layer Qwen2) with random weights, and its tokenizer: a byte-level BPE trained with ``tokenizers`` on the text in
``pretrained/tiny_corpus.txt`` plus the chat templates' system prompts, with ChatML's and InternVL's nine special
tokens and a ChatML chat template. Saved exactly like a real InternVL checkpoint (``config.json`` with
``model_type: internvl_chat``, original key names in ``model.safetensors``), so every code path that loads
InternVL2-1B loads it. Generated, not committed.

    python pretrained/build_tiny.py [--out pretrained/InternVL-tiny] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "internvl_chat"))  # runnable before `pip install -e .` too

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

TINY_VISION = dict(image_size=112, patch_size=14, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=256, qkv_bias=True, norm_type="layer_norm", drop_path_rate=0.0)
TINY_LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=128, intermediate_size=384,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)


def corpus_lines() -> list[str]:
    from internvl.conversation import get_conv_template, list_conv_templates

    text = (HERE / "tiny_corpus.txt").read_text(encoding="utf-8").splitlines()
    systems = [get_conv_template(name).system_message for name in list_conv_templates()]
    return [line for line in text + systems if line.strip()]


def build_tokenizer(vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHATML + INTERNVL_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      additional_special_tokens=INTERNVL_SPECIALS, model_max_length=4096)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build(out: Path, seed: int = 0) -> Path:
    import torch

    from internvl.fileio import atomic_directory
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    llm = dict(TINY_LLM, vocab_size=len(tokenizer), bos_token_id=None,
               eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    config = InternVLChatConfig.build(vision="intern_vit", vision_overrides=TINY_VISION, llm_config=llm,
                                      template="internvl2_5", downsample_ratio=0.5, dynamic_image_size=True,
                                      use_thumbnail=True, max_dynamic_patch=4, select_layer=-1)
    model = InternVLChatModel(config)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {out} ({n / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
          f"{config.num_image_token} tokens per {config.image_size}px tile)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "InternVL-tiny"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out, args.seed)


if __name__ == "__main__":
    main()
