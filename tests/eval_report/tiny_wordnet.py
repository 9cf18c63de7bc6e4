"""A tiny WordNet database in WordNet's own file format (``index.*`` / ``data.*`` with byte offsets, ``lexnames``,
``*.exc``), written by the tests so nltk's real METEOR code (its wordnet synonym stage included) runs offline."""
from __future__ import annotations

from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


def write_tiny_wordnet(nltk_data: Path, synsets: dict[str, list[tuple[list[str], str]]]) -> Path:
    """``synsets``: pos letter -> [(lemmas, gloss)]; writes ``nltk_data/corpora/wordnet`` and returns it."""
    root = nltk_data / "corpora" / "wordnet"
    root.mkdir(parents=True, exist_ok=True)
    # WordNet 3.0's 45 lexicographer files: 0-1 adjective, 2 adverb, 3-28 noun, 29-44 verb (names shortened)
    kinds = [("adj", 3)] * 2 + [("adv", 4)] + [("noun", 1)] * 26 + [("verb", 2)] * 16
    (root / "lexnames").write_text("".join(f"{i:02d}\t{k}.file{i}\t{n}\n" for i, (k, n) in enumerate(kinds)))
    lexfile = {"n": 3, "v": 29, "a": 0, "r": 2}
    for name in ("cntlist.rev", "index.sense"):
        (root / name).write_text("")
    for pos, suffix in POS.items():
        (root / f"{suffix}.exc").write_text("")
        lines, index = [], {}
        offset = 0
        for lemmas, gloss in synsets.get(pos, []):
            words = " ".join(f"{w} 0" for w in lemmas)
            line = f"{offset:08d} {lexfile[pos]:02d} {pos} {len(lemmas):02x} {words} 000 | {gloss}  \n"
            lines.append(line)
            for w in lemmas:
                index.setdefault(w, []).append(offset)
            offset += len(line.encode("utf-8"))
        (root / f"data.{suffix}").write_bytes("".join(lines).encode("utf-8"))
        (root / f"index.{suffix}").write_text("".join(
            f"{w} {pos} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
            for w, offs in sorted(index.items())))
    return root
