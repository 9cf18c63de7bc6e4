"""``preprocess`` (one tokenizer call a sample) gives exactly what the pre-issue-10 algorithm gave.

The reference is a frozen copy of the old code (``prompt_reference.reference_preprocess``: a tokenizer call per
piece, per role prefix and per template check, plus a whole-prompt re-tokenisation). Over generated
conversations -- random multi-turn, system prompts, 0-3 images with random token counts, leading/trailing
whitespace, unicode, grounding text, truncation at ``max_length``, malformed rows -- for every registered template
and the tokenizers the tests use (the tiny model's, phi3's, a BOS one, one whose BPE merges across newlines, and
two sentencepiece-style Metaspace ones), both give the same tensors, ``num_trained`` and ``truncated``, or the same
error (class, reason, message).

Run as a script for the per-sample timing of both on the tiny model's tokenizer:
``python tests/core/test_prompt_equivalence.py [TOKENIZER_DIR]`` (default ``pretrained/InternVL-tiny``).
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest
import torch

from internvl.conversation import list_conv_templates
from internvl.errors import DataError
from internvl.prompt import preprocess
from prompt_reference import reference_preprocess

WORDS = ["the", "lesion", "is", "round", "nodule", "cat", "mat", "Yes.", "No.", "42", "CT", "MRI", "你好", "结节",
         "<ref>nodule</ref><box>[[10, 20, 300, 400]]</box>", "[[1, 2, 3, 4]]", "a\nb", "\n\n", "  ", "\t", "?", "!",
         "user", "assistant", "system", "<|im_start|>", "<|im_end|>", "<|end|>", "<quad>", "é", "🙂"]


def _text(rng: random.Random, n_max: int = 12) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, n_max))]
    text = "".join(w + rng.choice([" ", "", "\n", " "]) for w in words)
    if rng.random() < 0.1:
        text = rng.choice(["\n", " ", "\n\n"]) + text  # leading whitespace: may merge with the role prefix
    return text


def random_case(rng: random.Random) -> dict:
    """One generated ``preprocess`` call (mostly valid; ~10% malformed on purpose)."""
    convs, counts = [], []
    if rng.random() < 0.4:
        convs.append({"from": "system", "value": _text(rng, 6) if rng.random() < 0.9 else ""})
    for _ in range(rng.randint(1, 4)):
        question = _text(rng)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3]) if not counts or rng.random() < 0.5 else 0):
            at = rng.randint(0, len(question))
            question = question[:at] + rng.choice(["<image>", "<image>\n", "\n<image>"]) + question[at:]
            counts.append(rng.randint(1, 40))
        convs.append({"from": rng.choice(["human", "user"]), "value": question})
        convs.append({"from": rng.choice(["gpt", "assistant"]), "value": _text(rng)})
    counts = [counts[i] for i in range(len(counts))]
    if rng.random() < 0.1:  # malformed on purpose
        what = rng.randrange(4)
        if what == 0:
            convs[-1]["value"] = rng.choice(["", "  \n"])
        elif what == 1:
            counts.append(5)
        elif what == 2:
            convs[-2]["value"] += "<IMG_CONTEXT>"
        else:
            convs[-1]["value"] += " <image>"
    max_length = rng.choice([None, None, rng.randint(8, 300)])
    return {"conversations": convs, "num_image_token_list": counts, "max_length": max_length,
            "check_whole": rng.random() < 0.85, "sample_ref": f"gen.jsonl:{rng.randint(1, 999)}"}


def outcome(fn, template: str, tokenizer, case: dict):
    try:
        out = fn(template, case["conversations"], tokenizer, case["num_image_token_list"],
                 sample_ref=case["sample_ref"], max_length=case["max_length"], check_whole=case["check_whole"])
    except (DataError, Exception) as exc:  # the class, reason and message must match too
        return ("error", type(exc).__name__, getattr(exc, "reason", None), str(exc))
    return ("ok", {k: (v.dtype, v.tolist()) if isinstance(v, torch.Tensor) else v for k, v in out.items()})


def _metaspace_tokenizer(prepend_scheme: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from core_data_helpers import CORPUS, INTERNVL_SPECIALS

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials + INTERNVL_SPECIALS, show_progress=False)
    tk.train_from_iterator(CORPUS + ["\n\n a\n b 你好 结节 é 🙂 \t"] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<unk>",
                                   additional_special_tokens=specials[1:] + INTERNVL_SPECIALS)


def _lstrip_tokenizer():
    """Byte-level BPE whose ``<|im_start|>`` swallows the whitespace before it (``lstrip``): the whole prompt
    then tokenises differently from its pieces (internvl2_5's newline after ``<|im_end|>``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from core_data_helpers import CORPUS, INTERNVL_SPECIALS

    specials = [AddedToken("<|endoftext|>", special=True), AddedToken("<|im_start|>", lstrip=True, special=True),
                AddedToken("<|im_end|>", special=True)] + [AddedToken(t, special=True) for t in INTERNVL_SPECIALS]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tokenizers(tok, phi3_tok, bos_tok, merging_tok):
    return {"tiny": tok, "phi3": phi3_tok, "bos": bos_tok, "merging": merging_tok, "lstrip": _lstrip_tokenizer(),
            "metaspace_always": _metaspace_tokenizer("always"), "metaspace_first": _metaspace_tokenizer("first")}


@pytest.mark.parametrize("tok_name", ["tiny", "phi3", "bos", "merging", "lstrip", "metaspace_always",
                                      "metaspace_first"])
def test_same_outputs_and_errors_as_the_reference(tokenizers, tok_name):
    tokenizer = tokenizers[tok_name]
    rng = random.Random(sum(map(ord, tok_name)))
    kinds, whole_mismatch = set(), 0
    for template in list_conv_templates():
        for i in range(90):
            case = random_case(rng)
            ref = outcome(reference_preprocess, template, tokenizer, case)
            new = outcome(preprocess, template, tokenizer, case)
            assert new == ref, f"{tok_name}/{template} case {i}: {case}"
            kinds.add(ref[0] if ref[0] == "ok" else ref[2] or ref[1])
            whole_mismatch += ref[0] == "error" and "differs from tokenising the whole prompt" in ref[3]
    # the generator reached the interesting outcomes (else this test would prove little)
    if tok_name == "tiny":
        assert {"ok", "TemplateError", "too_long", "placeholder_mismatch", "bad_row"} <= kinds, kinds
    if tok_name == "merging":
        assert "tokenization_mismatch" in kinds, kinds
    if tok_name == "lstrip":
        assert whole_mismatch > 0 and "ok" in kinds, kinds


def test_truncated_samples_match_too(tok):
    rng = random.Random(7)
    seen = 0
    for _ in range(200):
        case = random_case(rng)
        case["max_length"] = rng.randint(20, 120)
        ref = outcome(reference_preprocess, "internvl2_5", tok, case)
        assert outcome(preprocess, "internvl2_5", tok, case) == ref
        seen += ref[0] == "ok" and ref[1]["truncated"]
    assert seen >= 20


class CountingTokenizer:
    """Delegates to a tokenizer and counts its ``__call__``s."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_one_tokenizer_call_per_sample(tok):
    counting = CountingTokenizer(tok)
    conv = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nWhat?"},
            {"from": "gpt", "value": "A nodule."}, {"from": "human", "value": "<image> and this?"},
            {"from": "gpt", "value": "Benign."}]
    preprocess("internvl2_5", conv, counting, [16, 16])  # first sample of this tokenizer: the checks, once
    counting.calls = 0
    for _ in range(5):
        preprocess("internvl2_5", conv, counting, [16, 64], max_length=200)
    assert counting.calls == 5
    counting.calls = 0
    reference_preprocess("internvl2_5", conv, counting, [16, 64])
    assert counting.calls >= 14  # what it used to cost (the count)


def _bench(tokenizer_dir: str, n: int = 1000) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(0)
    cases = []
    while len(cases) < n:
        case = random_case(rng)
        case["check_whole"], case["max_length"] = True, None
        if outcome(reference_preprocess, "internvl2_5", tokenizer, case)[0] == "ok":
            case["num_image_token_list"] = [16 * rng.randint(1, 7) for _ in case["num_image_token_list"]]
            cases.append(case)
    best = {}
    for _ in range(3):  # alternate, keep each one's best round (the machine is shared)
        for name, fn in (("before (reference)", reference_preprocess), ("after (preprocess)", preprocess)):
            t0 = time.perf_counter()
            for case in cases:
                fn("internvl2_5", case["conversations"], tokenizer, case["num_image_token_list"], sample_ref="b:1")
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    for name, dt in best.items():
        print(f"{name:20s} {dt / n * 1e3:.3f} ms/sample over {n} samples (best of 3)")
    print(f"speed-up {best['before (reference)'] / best['after (preprocess)']:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _bench(sys.argv[1] if len(sys.argv) > 1 else "pretrained/InternVL-tiny")
