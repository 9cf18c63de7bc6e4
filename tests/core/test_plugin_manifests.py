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


@pytest.mark.parametrize("module", SHIPPED)
def test_manifest_matches_what_importing_the_plugin_registers(module):
    proc = subprocess.run([sys.executable, "-m", "internvl.tools.plugin_manifest", module, "--check"], cwd=REPO,
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


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
        from internvl.model import register_projector
        from internvl.model.projector import create_projector

        @register_projector("lab_proj", aliases=("lab_proj_alias",))
        def lab_proj(**kw):
            return create_projector("mlp", **kw)
    '''))
    declared = {"lab_proj": {"aliases": ["lab_proj_alias"]}}
    if stale:
        declared["lab_gone"] = {"aliases": []}
    (pkg / MANIFEST_NAME).write_text(json.dumps({"plugin": "lab_declared", "registries": {"projector": declared}}))
    (root / "lab_plain.py").write_text(textwrap.dedent('''
        from internvl.model import register_projector
        from internvl.model.projector import create_projector

        @register_projector("plain_proj")
        def plain_proj(**kw):
            return create_projector("mlp", **kw)
    '''))


def test_declared_names_list_without_import_and_resolve_by_importing_one_plugin(tmp_path):
    _fake_plugins(tmp_path)
    proc = _python('''
        import sys
        from internvl.model import PROJECTORS, list_projectors
        names = list_projectors()
        # listing: declared names without importing any plugin with a manifest; the manifest-less one is imported
        assert "lab_proj" in names and "brain3d_vit" not in names and "qformer" in names, names
        assert "lab_declared" not in sys.modules and "lab_plain" in sys.modules
        assert not any(m.startswith("patches.") for m in sys.modules), sorted(sys.modules)
        assert "lab_proj_alias" in PROJECTORS and "lab_declared" not in sys.modules
        # lookup by alias imports exactly the declaring plugin
        assert PROJECTORS.get("lab_proj_alias") is PROJECTORS.get("lab_proj")
        assert "lab_declared" in sys.modules
        assert not any(m.startswith("patches.") for m in sys.modules)
        # a shipped plugin's name imports that plugin only
        from internvl.model import VISION_MODELS
        VISION_MODELS.get("brain3d_vit")
        assert "patches.neuro" in sys.modules
        assert "patches.pathology" not in sys.modules and "patches.brainfound" not in sys.modules
        assert "diffusers" not in sys.modules
        print("ok")
    ''', tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_stale_manifest_is_named_and_check_fails(tmp_path):
    _fake_plugins(tmp_path, stale=True)
    proc = _python('''
        from internvl.model import PROJECTORS
        try:
            PROJECTORS.get("lab_gone")
        except KeyError as exc:
            print("ERR", exc)
    ''', tmp_path)
    assert "ERR unknown projector 'lab_gone'" in proc.stdout, proc.stderr[-3000:]
    assert "manifest of plugin 'lab_declared' declares it" in proc.stdout
    check = subprocess.run([sys.executable, "-m", "internvl.tools.plugin_manifest", "lab_declared", "--check"],
                           cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert check.returncode == 2 and "does not match" in check.stderr, check.stderr[-2000:]


def test_plugins_flag_and_env_still_import_eagerly(tmp_path):
    _fake_plugins(tmp_path)
    proc = _python('''
        import os, sys
        from internvl.registry import load_plugins
        assert "lab_declared" in load_plugins(["lab_declared"])  # --plugins: imported now, manifest or not
        os.environ["INTERNVL_PLUGINS"] = "patches.pathology"
        from internvl.model import list_projectors
        list_projectors()
        assert "patches.pathology" in sys.modules and "patches.brainfound" not in sys.modules
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
    module and no diffusers gets imported."""
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
        print("ok")
    ''')
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-3000:])
