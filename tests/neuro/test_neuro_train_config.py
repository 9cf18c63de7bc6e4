"""The YAML config of ``python -m patches.neuro.train``: NeuroVFM's published keys understood, unknown keys and bad
values refused naming the key (CLI: one ``error:`` line, exit 2), backbone names mapped to the VLM encoders."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from patches.neuro.train.__main__ import main
from patches.neuro.train.config import backbone_spec, check_config, load_config
from patches.neuro.train.schema import ConfigError

EXAMPLES = Path(__file__).parent / "neurovfm_examples"


def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}_example.yaml").read_text())


@pytest.mark.parametrize("name", ["pretraining", "classification"])
def test_neurovfm_examples_understood(name):
    raw = _example(name)
    if name == "classification":
        raw["data"]["study_labels"] = "/path/to/study_labels.csv"  # the training guide adds this path
        raw["data"]["mode_mapping"]["study_003"] = "mri"
    cfg = check_config(raw)
    key = "vision_backbone_cf" if name == "pretraining" else "model_hyperparams"
    cf = cfg["system"]["params"][key] if name == "pretraining" else cfg["system"]["params"][key]["vision_backbone_cf"]
    enc, over = backbone_spec(cf)
    assert enc == "neurovfm_tokens"
    assert over == dict(token_size=(4, 16, 16), in_channels=1, hidden_size=768, depth=12, num_heads=12, pe_dim=30,
                        mlp_ratio=4.0)
    assert cfg["training"]["trainer_params"]["precision"] == "bf16-mixed"
    if name == "classification":
        assert cfg["system"]["params"]["model_hyperparams"]["pooler_cf"]["which"] == "aggregate_then_classify"
        assert cfg["training"]["load_backbone"]["remove_prefix"] == "student_encoder."
    else:
        assert cfg["system"]["params"]["schd_cf"]["params"]["min_lr"] == "1e-6"  # checked when the schedule is built
        assert cfg["system"]["params"]["ema_beta"] == [0.996, 1.0]


@pytest.mark.parametrize("which", ["aggregate_then_classify", "classify_then_aggregate", "abmil", "addmil", "avgpool"])
def test_pooler_names_of_the_guide_and_the_example(which):
    raw = _example("classification")
    raw["data"]["study_labels"] = "labels.csv"
    raw["system"]["params"]["model_hyperparams"]["pooler_cf"]["which"] = which
    assert check_config(raw)["system"]["params"]["model_hyperparams"]["pooler_cf"]["which"] in (
        "aggregate_then_classify", "classify_then_aggregate", "avgpool")


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c["system"]["params"]["predictor_cf"].update(dimm=3), "system.params.predictor_cf.dimm: unknown"),
    (lambda c: c["data"]["loader"]["train"]["collate_fn"].update(drop=1), "data.loader.train.collate_fn.drop: unknown"),
    (lambda c: c.update(trainer={}), "trainer: unknown config key"),
    (lambda c: c["system"]["params"]["vision_backbone_cf"]["params"]["embed_layer_cf"]["params"].update(size=1),
     "embed_layer_cf.params.size: unknown"),
])
def test_unknown_key_names_it(edit, fragment):
    raw = _example("pretraining")
    edit(raw)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        cfg = check_config(raw)
        backbone_spec(cfg["system"]["params"]["vision_backbone_cf"], "system.params.vision_backbone_cf")


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c["training"]["trainer_params"].update(precision="fp64"), "training.trainer_params.precision: 'fp64'"),
    (lambda c: c["system"]["params"].update(ema_beta=[1.0, 0.9]), "system.params.ema_beta: start"),
    (lambda c: c["data"]["loader"]["train"]["collate_fn"].update(patch_drop_rate=1.5), "patch_drop_rate: must be"),
    (lambda c: c["data"]["loader"]["train"]["collate_fn"].update(remove_background=False), "remove_background: only"),
    (lambda c: c["data"]["mode_mapping"].update(study_009="pet"), "data.mode_mapping.study_009: 'pet'"),
    (lambda c: c["system"].update(which="VisionSegmentationSystem"), "system.which:"),
    (lambda c: c["infra"].pop("exp_root"), "infra.exp_root: required"),
])
def test_bad_value_names_key_and_reason(edit, fragment):
    raw = _example("pretraining")
    edit(raw)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        check_config(raw)


def test_backbone_contradictions_refused():
    cf = {"which": "vit_base", "params": {"embed_layer_cf": {"params": {"embed_dim": 384}}}}
    with pytest.raises(ConfigError, match="embed_layer_cf.params.embed_dim: 384 differs"):
        backbone_spec(cf)
    with pytest.raises(ConfigError, match="token_dim: 512"):
        backbone_spec({"which": "vit_small", "params": {"token_dim": 512}})
    with pytest.raises(ConfigError, match="needs embed_dim, depth and num_heads"):
        backbone_spec({"which": "vit", "params": {"depth": 2}})
    assert backbone_spec({"which": "vit_tiny", "params": {}})[1]["hidden_size"] == 192
    assert backbone_spec({"which": "brain3d_vit_tiny", "params": {"depth": 1}}) == ("brain3d_vit_tiny", {"depth": 1})


def test_cli_error_line_and_exit_code(tmp_path, capsys):
    raw = _example("pretraining")
    raw["system"]["params"]["opt_cf"]["paramz"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: system.params.opt_cf.paramz: unknown config key (known under system.params.opt_cf: "
                   f"['params', 'which'])"]
    (tmp_path / "broken.yaml").write_text("infra: [1,\n")
    assert main(["-c", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
