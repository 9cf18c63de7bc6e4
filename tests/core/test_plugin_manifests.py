"""Lazy plugins (``internvl.registry``): each shipped plugin's manifest is exactly what importing it registers;
declared names are listed without importing anything and looked up by importing only their plugin; a manifest-
less plugin still loads on first need; image-only entry points never import a plugin (so never diffusers)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from internvl.registry import ENTRY_POINT_GROUP, MANIFEST_NAME, read_manifest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("patches."))


def _env(*extra_paths, **env) -> dict:
    paths = [*map(str, extra_paths), str(REPO / "internvl_chat"), str(REPO), os.environ.get("PYTHONPATH", "")]
    out = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **env}
    out.pop("INTERNVL_NO_PLUGINS", None)
    out.pop("INTERNVL_PLUGINS", None)
    return out


def _python(code: str, *extra_paths, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env=_env(*extra_paths), timeout=timeout)


def test_every_shipped_plugin_has_a_manifest():
    assert SHIPPED == ["patches.brainfound", "patches.neuro", "patches.pathology"]
    for module in SHIPPED:
        manifest = read_manifest(module)
        assert manifest is not None and manifest["plugin"] == module and manifest["registries"], module


def test_manifests_match_what_importing_the_plugins_registers():
    proc = subprocess.run([sys.executable, "-m", "internvl.tools.plugin_manifest", *SHIPPED, "--check"], cwd=REPO,
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("up to date") == len(SHIPPED)


def _fake_plugins(root: Path, *, stale: bool = False) -> None:
    """Two out-of-tree plugins behind entry points (a fake dist-info): ``lab_declared`` ships a manifest,
    ``lab_plain`` none. ``stale``: the manifest declares a name the plugin does not register."""
    dist = root / "lab_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nlab_declared = lab_declared\n"
                                           f"lab_plain = lab_plain\n")
    pkg = root / "lab_declared"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from internvl.evaluation.base import EvalTask, register_task

        @register_task("lab_task", aliases=("lab_task_alias",))
        class LabTask(EvalTask):
            pass

        @register_task("lab_undeclared")  # newer than the manifest
        class LabUndeclared(EvalTask):
            pass
    '''))
    declared = {"lab_task": {"aliases": ["lab_task_alias"]}}
    if stale:
        declared["lab_gone"] = {"aliases": []}
    (pkg / MANIFEST_NAME).write_text(json.dumps({"plugin": "lab_declared", "registries": {"eval task": declared}}))
    (root / "lab_plain.py").write_text(textwrap.dedent('''
        from internvl.evaluation.base import EvalTask, register_task

        @register_task("plain_task")
        class PlainTask(EvalTask):
            pass
    '''))


def test_declared_names_list_without_import_and_resolve_by_importing_one_plugin(tmp_path):
    _fake_plugins(tmp_path)
    proc = _python('''
        import logging, sys
        logging.basicConfig(level=logging.WARNING)
        from internvl.evaluation.base import EVAL_TASKS, list_tasks
        names = list_tasks()
        # listing: declared names (ours and the shipped plugins') without importing a plugin that has a manifest;
        # the manifest-less one is imported to learn its names
        assert {"lab_task", "plain_task", "tumour_grade", "neuro_classification"} <= set(names), names
        assert "lab_task_alias" not in names and "lab_undeclared" not in names
        assert "lab_declared" not in sys.modules and "lab_plain" in sys.modules
        assert not any(m.startswith("patches.") for m in sys.modules), sorted(sys.modules)
        assert "lab_task_alias" in EVAL_TASKS and "nope" not in EVAL_TASKS and "lab_declared" not in sys.modules
        # lookup by alias imports exactly the declaring plugin
        assert EVAL_TASKS.get("lab_task_alias") is EVAL_TASKS.get("lab_task")
        assert "lab_declared" in sys.modules
        assert not any(m.startswith("patches.") for m in sys.modules)
        print("ok")
    ''', tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_name_missing_from_the_manifests_is_found_with_a_warning(tmp_path):
    """Every plugin is imported before a name is called unknown: a plugin newer than its manifest still works."""
    _fake_plugins(tmp_path)
    proc = _python('''
        import logging, sys
        logging.basicConfig(level=logging.WARNING)
        from internvl import registry
        from internvl.evaluation.base import EVAL_TASKS
        registry._loaded_modules.update({SHIPPED!r})  # the shipped plugins count as imported: keeps this light
        assert "lab_declared" not in sys.modules
        assert EVAL_TASKS.get("lab_undeclared").__name__ == "LabUndeclared"
        print("ok")
    '''.replace("{SHIPPED!r}", repr(SHIPPED)), tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert "eval task 'lab_undeclared' is registered by a plugin whose manifest does not declare it" in proc.stderr


def test_stale_manifest_is_named_and_check_fails(tmp_path):
    _fake_plugins(tmp_path, stale=True)
    proc = _python('''
        from internvl import registry
        from internvl.evaluation.base import EVAL_TASKS
        registry._loaded_modules.update({SHIPPED!r})  # keep the shipped plugins out (see above)
        try:
            EVAL_TASKS.get("lab_gone")
        except KeyError as exc:
            print("ERR", exc)
    '''.replace("{SHIPPED!r}", repr(SHIPPED)), tmp_path)
    assert "ERR unknown eval task 'lab_gone'" in proc.stdout, proc.stderr[-3000:]
    assert "manifest of plugin 'lab_declared' declares it" in proc.stdout
    assert "lab_undeclared" in proc.stdout  # the error lists what the plugins actually registered
    check = subprocess.run([sys.executable, "-m", "internvl.tools.plugin_manifest", "lab_declared", "--check"],
                           cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert check.returncode == 2 and "does not match" in check.stderr, check.stderr[-2000:]


def test_plugins_flag_and_env_still_import_eagerly(tmp_path):
    _fake_plugins(tmp_path)
    proc = _python('''
        import os, sys
        from internvl.registry import load_plugins
        assert "lab_declared" in load_plugins(["lab_declared"])  # --plugins: imported now, manifest or not
        os.environ["INTERNVL_PLUGINS"] = "lab_plain"
        from internvl.evaluation.base import list_tasks
        list_tasks()
        assert "lab_plain" in sys.modules and not any(m.startswith("patches.") for m in sys.modules)
        print("ok")
    ''', tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_demo_for_plugins", REPO / "data" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("plugdemo") / "demo"
    mod.build(str(out), seed=2, n_train=6, n_test_mcq=4, n_test_open=2)
    return out


def test_image_only_entry_points_import_no_plugin(tiny_model_dir, small_demo, tmp_path):
    """check_data, custom_eval and inference_v2 on the tiny image model, entry points active: no ``patches.*``
    module and no diffusers gets imported; then looking up a neuro encoder imports the neuro plugin alone."""
    image = next((small_demo / "images").rglob("*.png"))
    runs = [
        ("module", "internvl.tools.check_data", [str(small_demo / "train_meta.json"), "--model", str(tiny_model_dir),
                                                 "--no_progress"]),
        ("path", str(REPO / "eval" / "custom_eval.py"), ["--model", str(tiny_model_dir), "--data",
                                                         str(small_demo / "test_meta.json"), "--out",
                                                         str(tmp_path / "res.json"), "--max-new-tokens", "2",
                                                         "--no-progress"]),
        ("path", str(REPO / "inference_v2.py"), ["--model", str(tiny_model_dir), "--image", str(image),
                                                 "--question", "What?", "--max-new-tokens", "2", "--no-stream"]),
    ]
    proc = _python(f'''
        import runpy, sys
        for how, target, argv in {runs!r}:
            sys.argv = [target, *argv]
            try:
                (runpy.run_module if how == "module" else runpy.run_path)(target, run_name="__main__")
            except SystemExit as exc:
                assert exc.code in (0, None), (target, exc.code)
            bad = sorted(m for m in sys.modules if m == "diffusers" or m.startswith("patches."))
            assert not bad, (target, bad)
        # a shipped plugin's name imports that plugin only
        from internvl.model import VISION_MODELS
        VISION_MODELS.get("brain3d_vit")
        assert "patches.neuro" in sys.modules and "diffusers" not in sys.modules
        assert "patches.pathology" not in sys.modules and "patches.brainfound" not in sys.modules
        print("ok")
    ''')
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-3000:])
