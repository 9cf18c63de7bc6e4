"""Text metrics and answer parsing shared by evaluation tasks (core and plugins).

Nothing here touches a model: plain functions of strings, so plugin tasks reuse them and tests check them
against the reference packages.

* ``parse_choice(text, options)``: the option letter a free-text answer names, or ``None`` when it names none
  (or several). Rules, tried in order (first hit wins):

  1. the whole answer is one letter, with any brackets / punctuation around it: ``B``, ``(B)``, ``B.``, ``**b**``;
  2. the answer starts with a letter and a delimiter: ``B. green``, ``(B) green``, ``B: green``, ``B) green``;
  3. a phrase names it: ``The answer is B``, ``answer: (C)``, ``Option D``, ``the correct choice is A.``;
  4. exactly one option's text occurs in the answer (word-bounded, case-insensitive; an option whose text sits
     inside another matched option's text, ``red`` in ``dark red``, does not count);
  5. exactly one distinct option letter stands alone in the answer (``I pick C``).

  Capital ``A`` and ``I`` followed by a lower-case word are read as English (``A red circle``), not letters.
* ``option_map(sample)``: a sample's options as ``{"A": text, ...}`` from an ``options`` field (list or dict) or
  from ``A. text`` lines of the question.
* ``normalize_answer`` / ``exact_match`` / ``token_f1``: SQuAD conventions (lower case, punctuation and the
  articles a/an/the removed, white space collapsed; F1 over the bag of normalised tokens).
* ``bleu_tokens`` / ``sentence_bleu4`` / ``corpus_bleu4``: nltk BLEU-4 (uniform 1..4-gram weights, Chen & Cherry
  smoothing method 1 so short answers do not collapse to 0) on lower-cased word/punctuation tokens.
* ``rouge_l``: ``rouge_score``'s ROUGE-L F-measure (its tokenizer, Porter stemmer on); max over references.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

LETTERS = string.ascii_uppercase

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-Z])[.)、:：][ \t]*(.+?)[ \t]*$", re.MULTILINE)
_LETTER_ONLY = re.compile(r"^[\W_]*([A-Za-z])[\W_]*$")
_LEADING = re.compile(r"^[\s(\[*\"'`]*([A-Z])(?:[ \t]*[.)\]:：、]|[ \t]+[-–—])(?:\s|$)")
_PHRASE = re.compile(r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?i:is|would\s+be|should\s+be|=))?\s*[:：]?\s*"
                     r"(?i:option\s+|choice\s+)?[(\[*\"'`]*([A-Z])(?![A-Za-z0-9])")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


def _is_english_word(text: str, letter: str, end: int) -> bool:
    """``A``/``I`` used as article or pronoun: followed by white space and a lower-case word."""
    return letter in ("A", "I") and re.match(r"\s+[a-z]", text[end:]) is not None


def option_map(sample: dict) -> dict[str, str]:
    """``{"A": "red", ...}`` from ``sample["options"]`` (list or dict), else from ``A. text`` question lines."""
    options = sample.get("options")
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        if len(options) > len(LETTERS):
            raise ValueError(f"{len(options)} options; at most {len(LETTERS)} letters")
        return {LETTERS[i]: str(v) for i, v in enumerate(options)}
    if options is not None:
        raise ValueError(f"'options' must be a list or a dict, got {type(options).__name__}")
    return options_from_question(sample.get("question", ""))


def options_from_question(question: str) -> dict[str, str]:
    """The last run of consecutive option lines ``A. ...``, ``B. ...`` (starting at A) in a question."""
    found: dict[str, str] = {}
    for m in _OPTION_LINE.finditer(question or ""):
        letter, text = m.group(1), m.group(2)
        if letter == "A":
            found = {"A": text}
        elif found and letter == LETTERS[len(found)]:
            found[letter] = text
    return found if len(found) >= 2 else {}


def parse_choice(text: str | None, options: dict[str, str] | Sequence[str]) -> str | None:
    """The option letter ``text`` names (see module docstring for the rules), or ``None``."""
    if not isinstance(options, dict):
        options = {LETTERS[i]: str(v) for i, v in enumerate(options)}
    valid = set(options)
    text = (text or "").strip()
    if not text or not valid:
        return None
    m = _LETTER_ONLY.match(text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    m = _LEADING.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    for m in _PHRASE.finditer(text):
        if m.group(1) in valid and not _is_english_word(text, m.group(1), m.end(1)):
            return m.group(1)
    by_text = _letter_from_option_text(text, options)
    if by_text is not None:
        return by_text
    alone = {m.group(1) for m in _STANDALONE.finditer(text)
             if m.group(1) in valid and not _is_english_word(text, m.group(1), m.end(1))}
    return alone.pop() if len(alone) == 1 else None


def _letter_from_option_text(text: str, options: dict[str, str]) -> str | None:
    said = " " + " ".join(_plain_tokens(text)) + " "
    hits = {}
    for letter, opt in options.items():
        opt_norm = " ".join(_plain_tokens(opt))
        if opt_norm and f" {opt_norm} " in said:
            hits[letter] = opt_norm
    # drop options whose text is part of a longer matched option ("red" inside "dark red")
    kept = [k for k, v in hits.items() if not any(v != w and f" {v} " in f" {w} " for w in hits.values())]
    return kept[0] if len(kept) == 1 else None


def _plain_tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse white space."""
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _refs(references: str | Iterable[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else [str(r) for r in references]
    if not refs:
        raise ValueError("no reference answer")
    return refs


def exact_match(prediction: str, references: str | Iterable[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in _refs(references)))


def token_f1(prediction: str, references: str | Iterable[str]) -> float:
    """Max over references of the F1 between normalised token bags (both empty counts as a match)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in _refs(references):
        gold = normalize_answer(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def bleu_tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (nltk ``wordpunct_tokenize`` behaviour)."""
    return re.findall(r"\w+|[^\w\s]+", (text or "").lower())


@lru_cache(maxsize=1)
def _smoothing():
    from nltk.translate.bleu_score import SmoothingFunction

    return SmoothingFunction().method1


def sentence_bleu4(prediction: str, references: str | Iterable[str]) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    hyp = bleu_tokens(prediction)
    refs = [bleu_tokens(r) for r in _refs(references)]
    if not hyp or not any(refs):
        return 0.0
    return float(sentence_bleu(refs, hyp, weights=(0.25,) * 4, smoothing_function=_smoothing()))


def corpus_bleu4(predictions: Sequence[str], references: Sequence[str | Iterable[str]]) -> float:
    from nltk.translate.bleu_score import corpus_bleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    hyps = [bleu_tokens(p) for p in predictions]
    refs = [[bleu_tokens(r) for r in _refs(ref)] for ref in references]
    if not hyps or not any(hyps):
        return 0.0
    return float(corpus_bleu(refs, hyps, weights=(0.25,) * 4, smoothing_function=_smoothing()))


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Iterable[str]) -> float:
    scorer = _rouge_scorer()
    return max(float(scorer.score(r, prediction or "")["rougeL"].fmeasure) for r in _refs(references))


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(sum(values) / len(values)) if values else None
