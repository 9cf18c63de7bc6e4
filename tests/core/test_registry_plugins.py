"""Plugin discovery: entry points, --plugins modules, $INTERNVL_PLUGINS; the core runs without any plugin."""
import subprocess
import sys
import textwrap

import pytest

from internvl.registry import Registry, load_plugins


def test_duplicate_names_raise_and_unknown_names_list_the_known():
    reg = Registry("widget")
    reg.register("a", object(), aliases=("alpha",))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", object())
    with pytest.raises(KeyError, match="registered: a"):
        reg.get("nope")


def test_out_of_tree_plugin_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_lab_encoders.py").write_text(textwrap.dedent('''
        import torch
        from internvl.model.vision.intern_vit import InternViTEncoder
        from internvl.model import register_vision_model

        @register_vision_model("my_lab_vit", encoder=InternViTEncoder)
        def my_lab_vit(**overrides):
            return InternViTEncoder(**{"image_size": 28, "hidden_size": 16, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "intermediate_size": 32, **overrides})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    from internvl.model import create_vision_model

    assert load_plugins(["my_lab_encoders"]) == ["my_lab_encoders"]
    enc = create_vision_model("my_lab_vit", num_hidden_layers=2)
    assert enc.config.encoder_name == "my_lab_vit" and enc.config.num_hidden_layers == 2


def test_broken_plugin_is_reported_not_skipped(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="broken_plugin.*boom"):
        load_plugins(["broken_plugin"])


def test_core_runs_without_plugins():
    code = textwrap.dedent('''
        import sys, torch
        from internvl.model import list_vision_models, create_vision_model
        from internvl.model.internvl_chat import InternVLChatModel
        assert list_vision_models() == ["intern_vit"], list_vision_models()
        create_vision_model("intern_vit", image_size=28, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32)
        assert not any(m == "patches" or m.startswith("patches.") for m in sys.modules), "core imported a plugin"
        print("ok")
    ''')
    env_run = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "INTERNVL_NO_PLUGINS": "1"},
                             capture_output=True, text=True)
    assert env_run.returncode == 0, env_run.stderr[-2000:]


def test_core_never_imports_patches_by_name(repo_root):
    offenders = [str(p) for p in (repo_root / "internvl_chat").rglob("*.py")
                 if "import patches" in p.read_text() or "from patches" in p.read_text()]
    assert offenders == []
