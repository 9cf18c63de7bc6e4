"""The HTML report of a real evaluation run (tiny model, a small demo test set, ``--metrics meteor,bertscore`` with
the tiny BERT): one self-contained file next to results.json listing every metric with its interval, every plot
and the worst/best examples with thumbnails; then opened in headless Chromium (skipped without it), where every
metric row is shown and every plot image has loaded. ``SCREENSHOT_DIR=DIR`` keeps a screenshot of the page."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from internvl.evaluation.report_metrics import ReportMetricOptions
from internvl.evaluation.runner import evaluate, load_model

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_bert, tmp_path_factory) -> dict:
    spec = importlib.util.spec_from_file_location("build_demo_for_report", REPO / "data" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work = tmp_path_factory.mktemp("report")
    mod.build(str(work / "demo"), seed=2, n_train=4, n_test_mcq=12, n_test_open=6)
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    out = work / "results.json"
    results = evaluate(str(tiny_model_dir), str(work / "demo" / "test_meta.json"), str(out), model=model,
                       tokenizer=tokenizer, max_new_tokens=4, progress=False, report_metrics=["meteor", "bertscore"],
                       metric_options=ReportMetricOptions(bertscore_model=str(tiny_bert)))
    return {"results": results, "json": out, "html": work / "results.html"}


def _metric_names(results: dict) -> set[tuple[str, str, str]]:
    out = set()
    for ds, tasks in results["metrics"]["by_dataset"].items():
        for task, agg in tasks.items():
            out |= {(ds, task, k) for k, v in agg.items() if k not in ("plots", "not_computed")}
            out |= {(ds, task, k) for k in agg.get("not_computed", {})}
    return out


def test_report_is_written_and_self_contained(run):
    results, html = run["results"], run["html"].read_text()
    assert json.loads(run["json"].read_text())["html"] == "results.html"
    assert results["report_metrics"]["bertscore"].startswith("computed")
    meteor = results["report_metrics"]["meteor"]
    assert meteor.startswith("computed") or meteor.startswith("not computed: wordnet not found at")
    open_qa = results["metrics"]["by_task"]["open_qa"]
    assert "bertscore" in open_qa and all("bertscore" in r for r in results["samples"] if r["task"] == "open_qa")
    for _, _, name in _metric_names(results):
        assert f'data-metric="{name}"' in html, name
    n_plots = sum(len(agg.get("plots", [])) for tasks in results["metrics"]["by_dataset"].values()
                  for agg in tasks.values())
    assert n_plots >= 2 and html.count('class="plot"') == n_plots
    assert html.count('class="thumb"') >= 2  # worst/best examples show their image
    assert "95% CI" in html and re.search(r"\[\d\.\d{4}, \d\.\d{4}\]", html)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html), "the report must not load anything"


def test_report_in_browser(run, tmp_path):
    from chromium_driver import save_screenshot, shutdown, start_chromium

    driver = start_chromium(tmp_path / "profile")
    try:
        driver.get(run["html"].as_uri())
        shown = {row.get_attribute("data-metric") for row in driver.find_elements("css selector", "tr.metric")
                 if row.is_displayed()}
        assert {name for _, _, name in _metric_names(run["results"])} <= shown
        plots = driver.find_elements("css selector", "img.plot")
        assert plots and all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", p)
                             for p in plots)
        thumbs = driver.find_elements("css selector", "img.thumb")
        assert thumbs and all(driver.execute_script("return arguments[0].naturalWidth > 0", t) for t in thumbs)
        save_screenshot(driver.find_element("css selector", "body"), "report.png")
    finally:
        shutdown(driver, tmp_path / "profile")
