"""Evaluation tasks and metrics without a model: answer parsing, chance level, text metrics against the reference
packages, the task registry (an out-of-tree task registered here), and how test rows become samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from internvl.evaluation import EVAL_TASKS, create_task, list_tasks, metrics, register_task
from internvl.evaluation.base import EvalTask
from internvl.evaluation.runner import aggregate, read_samples, score_records
from internvl.evaluation.testset import split_row

OPTS = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
MCQ_Q = "<image>\nWhich colour is the shape?\nA. red\nB. green\nC. blue\nD. yellow\nAnswer with the option's letter."


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("**B**", "B"), ("[C]", "C"), ("C\n", "C"),
    ("B. green", "B"), ("(B) green", "B"), ("B: green", "B"), ("B) green", "B"),
    ("The answer is B", "B"), ("The answer is B.", "B"), ("The answer is (A).", "A"), ("answer: (C)", "C"),
    ("Answer: A", "A"), ("Option D", "D"), ("the correct choice is A.", "A"), ("I think the answer is D", "D"),
    ("green", "B"), ("It is green.", "B"), ("BLUE", "C"), ("The shape is yellow in colour", "D"),
    ("I pick C", "C"), ("A green circle", "B"),  # article "A", not option A
])
def test_parse_choice_phrasings(text, expected):
    assert metrics.parse_choice(text, OPTS) == expected


@pytest.mark.parametrize("text", ["", "   ", None, "Z", "E.", "I think", "red or blue", "B or C", "The option is",
                                  "a purple one", "答案"])
def test_parse_choice_failures_are_none(text):
    assert metrics.parse_choice(text, OPTS) is None


def test_parse_choice_prefers_the_longer_option_text():
    assert metrics.parse_choice("dark red", {"A": "red", "B": "dark red"}) == "B"
    assert metrics.parse_choice("red", {"A": "red", "B": "dark red"}) == "A"


def test_option_map_sources():
    assert metrics.option_map({"options": ["x", "y"]}) == {"A": "x", "B": "y"}
    assert metrics.option_map({"options": {"a": "x", "b": "y"}}) == {"A": "x", "B": "y"}
    assert metrics.option_map({"question": MCQ_Q}) == OPTS
    assert metrics.option_map({"question": "no options here"}) == {}
    with pytest.raises(ValueError):
        metrics.option_map({"options": "x,y"})


def test_mcq_scores_unparsed_as_wrong_and_chance_level(tmp_path):
    task = create_task("mcq")
    preds = ["B", "The answer is (C)", "no idea", "A"]
    samples = [{"question": MCQ_Q, "reference": "B"}, {"question": MCQ_Q, "reference": "C"},
               {"question": MCQ_Q, "reference": "D"}, {"options": ["yes", "no"], "reference": "B"}]
    recs = [{**task.score(p, s), "prediction": p} for p, s in zip(preds, samples)]
    assert [r["pred_letter"] for r in recs] == ["B", "C", None, "A"]
    assert [r["correct"] for r in recs] == [True, True, False, False]
    agg = task.aggregate(recs, str(tmp_path))
    assert agg["n"] == 4 and agg["accuracy"] == 0.5 and agg["n_unparsed"] == 1 and agg["unparsed_rate"] == 0.25
    assert agg["accuracy_parsed"] == pytest.approx(2 / 3)
    assert agg["chance"] == pytest.approx((3 * 0.25 + 0.5) / 4)
    assert agg["pred_counts"] == {"A": 1, "B": 1, "C": 1, "none": 1}
    assert agg["p_value_vs_chance"] is None  # mixed option counts: no single binomial
    assert all(os.path.getsize(p) > 1000 for p in agg["plots"])


def test_mcq_p_value_against_chance(tmp_path):
    task = create_task("mcq")
    recs = [task.score("A" if i < 18 else "B", {"question": MCQ_Q, "reference": "A"}) for i in range(20)]
    agg = task.aggregate(recs, str(tmp_path))
    assert agg["accuracy"] == 0.9 and agg["chance"] == 0.25
    from scipy.stats import binomtest
    assert agg["p_value_vs_chance"] == pytest.approx(binomtest(18, 20, 0.25, alternative="greater").pvalue)


def test_mcq_rejects_bad_rows():
    task = create_task("mcq")
    with pytest.raises(ValueError, match="no options"):
        task.score("A", {"question": "What colour?", "reference": "A"})
    with pytest.raises(ValueError, match="names none of the options"):
        task.score("A", {"question": MCQ_Q, "reference": "purple"})


def test_open_qa_metrics_match_the_packages(tmp_path):
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
    from rouge_score import rouge_scorer

    pairs = [("The tumour is located in the left frontal lobe.", "A tumour in the left frontal lobe."),
             ("red", "red"), ("Grade 2 invasive ductal carcinoma", "invasive ductal carcinoma, grade 3"),
             ("", "blue")]
    task = create_task("open_qa")
    recs = [{**task.score(p, {"reference": r}), "prediction": p, "reference": r} for p, r in pairs]
    smooth = SmoothingFunction().method1
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for (pred, ref), rec in zip(pairs, recs):
        hyp, refs = metrics.bleu_tokens(pred), [metrics.bleu_tokens(ref)]
        expected = sentence_bleu(refs, hyp, weights=(0.25,) * 4, smoothing_function=smooth) if hyp else 0.0
        assert rec["bleu4"] == pytest.approx(expected)
        assert rec["rouge_l"] == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    assert [r["exact_match"] for r in recs] == [0.0, 1.0, 0.0, 0.0]
    # SQuAD token F1 by hand: pred {tumour, is, located, in, left, frontal, lobe} vs gold {tumour, in, left, frontal,
    # lobe}: 5 common, P = 5/7, R = 5/5
    assert recs[0]["token_f1"] == pytest.approx(2 * (5 / 7) * 1 / (5 / 7 + 1))
    assert recs[3]["token_f1"] == 0.0 and recs[3]["rouge_l"] == 0.0
    agg = task.aggregate(recs, str(tmp_path))
    assert agg["exact_match"] == 0.25
    expected_corpus = corpus_bleu([[metrics.bleu_tokens(r)] for _, r in pairs],
                                  [metrics.bleu_tokens(p) for p, _ in pairs], weights=(0.25,) * 4,
                                  smoothing_function=smooth)
    assert agg["bleu4_corpus"] == pytest.approx(expected_corpus)
    assert os.path.exists(agg["plots"][0])


def test_open_qa_several_references_best_counts():
    task = create_task("open_qa")
    rec = task.score("the colour is blue", {"reference": ["red", "The colour is blue."]})
    assert rec["exact_match"] == 1.0 and rec["token_f1"] == 1.0 and rec["rouge_l"] == 1.0


def test_normalisation_and_f1_edge_cases():
    assert metrics.normalize_answer("  The  Answer, is: BLUE! ") == "answer is blue"
    assert metrics.exact_match("An apple.", "apple") == 1.0
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("x", "") == 0.0


class _LengthTask(EvalTask):
    """An out-of-tree task: is the answer no longer than the reference?"""

    name = "test_only_length_task"

    def score(self, prediction, sample):
        return {"short_enough": len(prediction) <= len(sample["reference"])}

    def aggregate(self, records, out_dir):
        return {"n": len(records), "rate": sum(r["short_enough"] for r in records) / len(records)}


def test_out_of_tree_task_is_found_by_name(tmp_path):
    if "test_only_length_task" not in EVAL_TASKS:
        register_task("test_only_length_task")(_LengthTask)
    assert "test_only_length_task" in list_tasks()
    with pytest.raises(ValueError, match="already registered"):
        register_task("test_only_length_task")(_LengthTask)
    rows = [{"conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi"}],
             "task": "test_only_length_task"},
            {"conversations": [{"from": "human", "value": MCQ_Q}, {"from": "gpt", "value": "C"}]}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples = read_samples(str(path))
    assert [s.task for s in samples] == ["test_only_length_task", "mcq"]
    records = score_records(samples, {samples[0].uid: "hello", samples[1].uid: "C"})
    result = aggregate(records, str(tmp_path / "plots"), str(tmp_path))
    assert result["by_task"]["test_only_length_task"] == {"n": 1, "rate": 0.0}
    assert result["by_task"]["mcq"]["accuracy"] == 1.0
    assert result["by_dataset"]["t"]["mcq"]["plots"] == [os.path.join("plots", "all", "mcq", "mcq_confusion.png")]


def test_unknown_task_names_the_registry():
    with pytest.raises(KeyError, match="no_such_task.*--plugins"):
        create_task("no_such_task")


def test_plugin_task_via_cli_plugins_flag(tmp_path, repo_root):
    (tmp_path / "my_eval_plugin_xyz.py").write_text(
        "from internvl.evaluation import EvalTask, register_task\n"
        "@register_task('plugin_grade_xyz')\n"
        "class T(EvalTask):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "INTERNVL_NO_PLUGINS": "1"}
    out = subprocess.run([sys.executable, str(repo_root / "eval" / "custom_eval.py"), "--list-tasks",
                          "--plugins", "my_eval_plugin_xyz"], capture_output=True, text=True, env=env, check=True)
    assert {"mcq", "open_qa", "plugin_grade_xyz"} <= set(out.stdout.split())


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_task_precedence_row_meta_cli_default(tmp_path):
    qa = {"conversations": [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "x"}]}
    rows = [dict(qa, task="open_qa"), qa, {"conversations": [{"from": "human", "value": MCQ_Q},
                                                            {"from": "gpt", "value": "A"}]}]
    a = _write(tmp_path, "a.jsonl", rows)
    b = _write(tmp_path, "b.jsonl", rows)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"with_task": {"root": str(tmp_path), "annotation": a, "task": "mcq"},
                                "no_task": {"root": str(tmp_path), "annotation": b, "max_dynamic_patch": 2}}))
    by = {(s.dataset, s.line): s for s in read_samples(str(meta), task="test_cli_task")}
    assert [by["with_task", i].task for i in (1, 2, 3)] == ["open_qa", "mcq", "mcq"]
    assert [by["no_task", i].task for i in (1, 2, 3)] == ["open_qa", "test_cli_task", "test_cli_task"]
    assert by["no_task", 1].options == {"max_dynamic_patch": 2} and by["with_task", 1].options == {}
    assert [s.task for s in read_samples(a)] == ["open_qa", "open_qa", "mcq"]  # default rule
    assert len(read_samples(str(meta), limit=2)) == 4  # first 2 rows of each dataset


def test_split_row_forms():
    where = "f.jsonl:3"
    conv = [{"from": "system", "value": "be brief"}, {"from": "human", "value": "<image>\nq1"},
            {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]
    assert split_row({"conversations": conv}, where) == ("q2", [("<image>\nq1", "a1")], "a2", "be brief")
    assert split_row({"question": "q", "answer": ["a", "b"]}, where) == ("q", [], ["a", "b"], None)
    open_end = {"conversations": [{"from": "human", "value": "q"}], "answer": "a"}
    assert split_row(open_end, where) == ("q", [], "a", None)
    for bad in ({"conversations": [{"from": "human", "value": "q"}]},
                {"conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]},
                {"conversations": "text"}, {"image": "x.png"}):
        with pytest.raises(ValueError, match="f.jsonl:3"):
            split_row(bad, where)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_samples(str(path))
