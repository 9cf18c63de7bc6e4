"""The plugin's boundaries (core-redesign item): the neuro plugin only through ``patches.neuro.api``, no decisions
by encoder name, and the core's checkpoint code for the stages' checkpoints."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from bf_helpers import REPO

PLUGIN = REPO / "patches/brainfound"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_neuro_is_reached_only_through_its_public_api():
    import patches.neuro.api as api

    used = {m for f in PLUGIN.glob("*.py") for m in _imported_modules(f) if m.startswith("patches.neuro")}
    assert used == {"patches.neuro.api"}, used
    assert all(hasattr(api, name) for name in api.__all__) and api.__doc__


def test_no_encoder_name_checks_in_the_plugin_code():
    for f in PLUGIN.glob("*.py"):
        if f.name == "weights.py":  # recognises its own saved-encoder folders by their config's model_type
            continue
        assert "encoder_name" not in f.read_text(), f


def test_meditk_slices_follow_the_declared_input_kinds(tmp_path):
    """An encoder config that declares ``meditk`` gets slice items whatever its name."""
    from internvl.media import MEDIA_READERS
    from internvl.model.internvl_chat import InternVLChatConfig
    from patches.brainfound.synthetic import synthetic_head

    llm = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=300)
    cfg = InternVLChatConfig.build(vision="brainfound_unet", vision_overrides={"preset": "tiny"}, llm_config=llm,
                                   projector="mlp", template="internvl2_5")
    np.savez(tmp_path / "s.npz", data=synthetic_head(np.random.default_rng(0), 6, 24).astype(np.int16))
    cfg.vision_config.encoder_name = "some_other_name"
    items = MEDIA_READERS.get("meditk")(cfg, {}).load(str(tmp_path / "s.npz"))
    assert len(items) == 4 and items[0].shape == (3, 32, 32)  # tiny: 4 slices of 32 px
    cfg.vision_config.input_kinds = ("volume",)  # no meditk declared: the neuro volume reader takes over
    reader = MEDIA_READERS.get("meditk")(cfg, {})
    assert reader._volume_reader is not None


def test_stage_checkpoints_use_the_core_layout(tmp_path):
    """``save_checkpoint`` writes what the core's ``last_complete_checkpoint`` / ``read_weights`` read."""
    from accelerate import Accelerator

    from internvl.model.checkpoint import read_weights
    from internvl.train.trainer_utils import last_complete_checkpoint
    from patches.brainfound.train_utils import save_checkpoint

    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    acc = Accelerator(cpu=True)
    for step in (1, 2, 3):
        save_checkpoint(acc, tmp_path, step, lin.state_dict(), opt, sched, {"history": []}, save_total_limit=2)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert torch.equal(read_weights(str(tmp_path / "checkpoint-3"))["weight"], lin.weight.detach())
