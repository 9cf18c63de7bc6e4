"""``python -m patches.neuro.train`` end to end on synthetic studies: NeuroVFM's two example configs (test copies)
run with only paths, study lists, sizes, epochs and device settings changed; outputs in NeuroVFM's layout; the
CPU/fp32 fallback warns once; JEPA loss falls and features do not collapse; the JEPA backbone loads into the
classifier and into the VLM encoder strictly (weights equal); kill -9 + resume repeats the uninterrupted run
exactly; a finished run re-launched changes nothing; the project's own example configs run."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from patches.neuro.train.__main__ import main
from patches.neuro.train.checkpoint import read_checkpoint

EXAMPLES = Path(__file__).parent / "neurovfm_examples"
REPO = Path(__file__).resolve().parents[2]
TINY_VIT = {"which": "vit", "params": {
    "embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "token_dim": 128,
    "embed_layer_cf": {"which": "voxel", "params": {"patch_hw_size": 8, "patch_d_size": 2, "in_chans": 1,
                                                    "embed_dim": 48}},
    "pos_emb_cf": {"which": "pe3d", "params": {"d": 12, "d_size": 16, "hw_size": 16, "concat": True}}}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, thread contention made these tiny steps 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(name: str, studies: Path, root: Path, epochs: int, **training) -> Path:
    """NeuroVFM's example with only paths, study lists, sizes, epochs (and GPU count when CUDA exists) changed."""
    cfg = yaml.safe_load((EXAMPLES / f"{name}_example.yaml").read_text())
    cfg["infra"]["exp_root"] = str(root)
    cfg["infra"]["log_every_n_steps"] = 1
    if torch.cuda.is_available():
        cfg["infra"]["num_gpus"] = 0
    data = cfg["data"]
    data["raw_data_dir"], data["cache_dir"] = str(studies / "studies"), str(studies / "cache")
    with open(studies / "mode_mapping.csv") as fh:
        data["mode_mapping"] = {r["study_id"]: r["mode"] for r in csv.DictReader(fh)}
    for split in ("train", "val"):
        data["dataset"][split]["studies"] = (studies / f"{split}_studies.txt").read_text().split()
        data["dataset"][split]["params"]["max_crop_size"] = [8, 5, 5]
        data["loader"][split].update(batch_size=3, num_workers=0)
    sp = cfg["system"]["params"]
    if name == "pretraining":
        sp["vision_backbone_cf"] = TINY_VIT
        sp["predictor_cf"].update(dim=48, depth=1, dim_head=12, num_heads=4)
        sp["proj_params"]["mim"].update(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    else:
        data["study_labels"] = str(studies / "labels.csv")
        sp["model_hyperparams"]["vision_backbone_cf"] = TINY_VIT
        sp["model_hyperparams"]["pooler_cf"]["params"]["hidden_dim"] = 16
        sp["model_hyperparams"]["proj_params"]["hidden_dims"] = [16]
    sp["schd_cf"]["params"]["warmup_epochs"] = 1
    cfg["training"]["trainer_params"]["max_epochs"] = epochs
    cfg["training"]["checkpoint_every_n_epochs"] = 1
    cfg["training"].update(training)
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def csv_rows(root: Path, metric: str) -> dict[int, str]:
    """Last logged value per step (a resumed run re-logs the steps it repeats)."""
    with open(root / "csv" / "metrics.csv") as fh:
        return {int(r["step"]): r["value"] for r in csv.DictReader(fh) if r["metric"] == metric}


@pytest.fixture(scope="module")
def pretrained(neuro_studies, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain") / "run"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("patches.neuro.train").addHandler(handler)
    try:
        assert main(["-c", str(tiny_config("pretraining", neuro_studies, root, epochs=4))]) == 0
    finally:
        logging.getLogger("patches.neuro.train").removeHandler(handler)
    return root, [r.getMessage() for r in records]


def test_pretraining_example_outputs_and_fallback(pretrained):
    root, warnings = pretrained
    assert sorted(p.name for p in (root / "models").glob("*.ckpt")) == [
        "best-val_loss_epoch.ckpt", "epoch-01.ckpt", "epoch-02.ckpt", "epoch-03.ckpt", "epoch-04.ckpt", "last.ckpt"]
    assert list((root / "tb").glob("events.out.tfevents.*")) and (root / "csv" / "metrics.csv").exists()
    assert (root / "plots" / "metrics.png").stat().st_size > 0
    tensors, state = read_checkpoint(str(root / "models" / "last.ckpt"))  # safetensors + JSON: nothing unpickled
    assert state["epoch"] == 4 and state["system"] == "VisionPretrainingSystem"
    assert json.loads((root / "models" / "last.json").read_text())["global_step"] == state["global_step"] == 8
    assert any(k.startswith("student_encoder.") for k in tensors) and any(k.startswith("optimizer.") for k in tensors)
    if not torch.cuda.is_available():
        fallback = [w for w in warnings if "no GPU in use" in w]
        assert len(fallback) == 1 and "bf16-mixed" in fallback[0]
    assert any("proj_params.mim is accepted but unused" in w for w in warnings)


def test_jepa_loss_falls_and_features_do_not_collapse(pretrained, neuro_studies):
    from patches.neuro.encoders.pretrained import load_backbone
    from patches.neuro.train.jepa import feature_spread
    from internvl.model.vision.base import create_vision_model

    root, _ = pretrained
    loss = csv_rows(root, "train/loss_epoch")
    assert loss[8] < loss[2], loss  # last epoch below the first
    enc = create_vision_model("neurovfm_tokens", token_size=(2, 8, 8), hidden_size=48, depth=2, num_heads=4,
                              pe_dim=12, mlp_ratio=2.0).eval()
    load_backbone(enc, str(root / "models" / "last.ckpt"), "teacher_encoder.")
    from patches.neuro.train.config import load_config
    from patches.neuro.train.data import StudyData, discover

    cfg = load_config(str(root.parent / f"{root.name}.yaml"))
    ds = StudyData(discover(cfg, "val"), encoder_config=enc.config, cfg=cfg, split="val", train=False,
                   study_level=False, all_windows=False)
    with torch.no_grad():
        feats = torch.cat(enc([ds[(0, i)]["items"][0] for i in range(len(ds))]))
    spread = feature_spread(feats)
    FLOOR = 0.05  # per-dimension std across tokens of 3 volumes, LayerNorm-ed features (collapse gives ~0)
    assert (spread > FLOOR).float().mean() >= 0.9, spread
    with torch.no_grad():  # the check fails on a collapsed encoder (every token the same vector)
        enc.norm.weight.zero_()
        assert (feature_spread(torch.cat(enc([ds[(0, 0)]["items"][0]]))) > FLOOR).float().mean() == 0


def test_logged_ema_momentum_follows_the_schedule(pretrained):
    root, _ = pretrained
    beta, total = [0.996, 1.0], 8  # the example's ema_beta; 4 epochs x 2 steps
    logged = csv_rows(root, "train/ema_momentum")
    assert sorted(logged) == list(range(1, total + 1))
    for step, value in logged.items():
        assert float(value) == pytest.approx(beta[0] + (beta[1] - beta[0]) * step / total, abs=1e-12)


def test_classification_example_from_the_jepa_backbone(pretrained, neuro_studies, tmp_path):
    root, _ = pretrained
    out = tmp_path / "cls"
    path = tiny_config("classification", neuro_studies, out, epochs=2,
                       load_backbone={"ckpt_path": str(root / "models" / "last.ckpt"), "remove_prefix": "student_encoder."})
    assert main(["-c", str(path)]) == 0
    names = sorted(p.name for p in (out / "models").glob("*.ckpt"))
    assert "last.ckpt" in names and "best-val_auc_epoch.ckpt" in names
    _, state = read_checkpoint(str(out / "models" / "last.ckpt"))
    for key in ("val/auc_epoch", "val/bacc_epoch", "val/f1_epoch", "val/auc/lesion", "val/loss_epoch"):
        assert key in state["metrics"], key
    pre, _ = read_checkpoint(str(root / "models" / "last.ckpt"))
    cls, _ = read_checkpoint(str(out / "models" / "last.ckpt"))
    backbone = {k[len("backbone."):]: v for k, v in cls.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, pre["student_encoder." + k]) for k, v in backbone.items())  # frozen


def test_jepa_backbone_loads_into_the_vlm_strictly(pretrained, tmp_path):
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from patches.neuro.encoders.pretrained import PretrainedLoadError

    root, _ = pretrained
    ckpt = str(root / "models" / "last.ckpt")
    llm = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
               max_position_embeddings=256)
    over = dict(token_size=(2, 8, 8), hidden_size=48, depth=2, num_heads=4, pe_dim=12, mlp_ratio=2.0,
                pretrained=ckpt, remove_prefix="teacher_encoder.")
    config = InternVLChatConfig.build(vision="neurovfm_tokens", vision_overrides=over, llm_config=llm,
                                      projector="volume_perceiver", projector_config={"num_queries": 4})
    model = InternVLChatModel(config)
    tensors, _ = read_checkpoint(ckpt)
    own = model.vision_model.state_dict()
    assert own and all(torch.equal(v, tensors["teacher_encoder." + k]) for k, v in own.items())
    # the fine-tuned VLM checkpoint, reloaded, keeps its own (fine-tuned) weights, also without the backbone file
    with torch.no_grad():
        model.vision_model.norm.weight.fill_(3.0)
    model.save_pretrained(tmp_path / "vlm")
    moved = tmp_path / "moved.ckpt"
    os.replace(ckpt, moved)
    try:
        again = InternVLChatModel.from_pretrained(tmp_path / "vlm")
    finally:
        os.replace(moved, ckpt)
    assert torch.equal(again.vision_model.norm.weight, torch.full((48,), 3.0))
    from internvl.model.vision.base import create_vision_model

    with pytest.raises(PretrainedLoadError, match=f"{ckpt}: backbone keys do not match.*unexpected"):
        create_vision_model("neurovfm_tokens", **dict(over, depth=1))
    with pytest.raises(PretrainedLoadError, match="no tensor key starts with remove_prefix='backbone.'"):
        create_vision_model("neurovfm_tokens", **dict(over, remove_prefix="backbone."))


def test_kill_and_resume_repeat_the_uninterrupted_run(neuro_studies, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    epochs = 8
    assert main(["-c", str(tiny_config("pretraining", neuro_studies, ref, epochs))]) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "internvl_chat"), str(REPO)]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "patches.neuro.train", "-c",
                             str(tiny_config("pretraining", neuro_studies, killed, epochs))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed / "models" / "last.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if state_file.exists():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    _, state = read_checkpoint(str(killed / "models" / "last.ckpt"))
    assert proc.returncode == -signal.SIGKILL and state["epoch"] < epochs, (proc.returncode, state["epoch"])
    resumed = tiny_config("pretraining", neuro_studies, killed, epochs,
                          resume_checkpoint=str(killed / "models" / "last.ckpt"))
    assert main(["-c", str(resumed)]) == 0
    a, b = csv_rows(ref, "train/loss_step"), csv_rows(killed, "train/loss_step")
    after = [s for s in a if s > state["global_step"]]
    assert after and all(a[s] == b[s] for s in after), (state["global_step"], a, b)
    ta, _ = read_checkpoint(str(ref / "models" / "last.ckpt"))
    tb, _ = read_checkpoint(str(killed / "models" / "last.ckpt"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # incl. EMA teacher, optimiser
    # a finished run re-launched changes nothing; a new run over an existing one is refused
    before = {p: p.read_bytes() for p in (killed / "models").iterdir()}
    assert main(["-c", str(resumed)]) == 0
    assert {p: p.read_bytes() for p in (killed / "models").iterdir()} == before
    assert main(["-c", str(tiny_config("pretraining", neuro_studies, killed, epochs))]) == 2


@pytest.mark.parametrize("name", ["pretrain_tiny", "classify_tiny"])
def test_project_example_configs_run(name, pretrained, neuro_studies, tmp_path):
    """shell/neuro/config/*.yaml with the data folder, exp_root, epochs and batch size fitted to the test's copies."""
    text = (REPO / "shell" / "neuro" / "config" / f"{name}.yaml").read_text()
    text = text.replace("data/demo_neuro_train", str(neuro_studies))
    text = text.replace("work_dirs/neuro_train/pretrain_tiny", str(pretrained[0]))
    cfg = yaml.safe_load(text)
    cfg["infra"]["exp_root"] = str(tmp_path / name)
    cfg["training"]["trainer_params"]["max_epochs"] = 1
    for split in ("train", "val"):
        cfg["data"]["loader"][split]["batch_size"] = 3  # 6 + 3 test studies
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-c", str(path)]) == 0
    assert (tmp_path / name / "models" / "last.ckpt").exists()


def test_brain3d_vit_variant_pretrains_and_loads_into_the_vlm_encoder(neuro_studies, tmp_path):
    from internvl.model.vision.base import create_vision_model

    root = tmp_path / "b3d"
    path = tiny_config("pretraining", neuro_studies, root, epochs=1)
    cfg = yaml.safe_load(path.read_text())
    enc = {"volume_shape": [16, 32, 32], "patch_size": [4, 8, 8], "preprocess": {"target_spacing": [2, 1.5, 1.5]}}
    cfg["system"]["params"]["vision_backbone_cf"] = {"which": "brain3d_vit_tiny", "params": enc}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-c", str(path)]) == 0
    ckpt = str(root / "models" / "last.ckpt")
    vlm_encoder = create_vision_model("brain3d_vit_tiny", **enc, pretrained=ckpt, remove_prefix="student_encoder.")
    tensors, _ = read_checkpoint(ckpt)
    assert all(torch.equal(v, tensors["student_encoder." + k]) for k, v in vlm_encoder.state_dict().items())


def test_bad_studies_stop_with_one_error_line(neuro_studies, tmp_path, capsys):
    import shutil

    from patches.neuro.synthetic import phantom, save_nifti

    studies = tmp_path / "data"
    shutil.copytree(neuro_studies, studies, ignore=shutil.ignore_patterns("cache"))
    tiny = studies / "studies" / "study_0000"
    shutil.rmtree(tiny)
    save_nifti(phantom((6, 6, 6)), str(tiny / "t1.nii.gz"))  # smaller than one 2 x 8 x 8 token after resampling
    assert main(["-c", str(tiny_config("pretraining", studies, tmp_path / "run", epochs=1))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: studies [") and "study_0000" in err and "smaller than one token" in err
    (studies / "studies" / "study_0001" / "t1.nii.gz").write_bytes(b"not a nifti")
    assert main(["-c", str(tiny_config("pretraining", studies, tmp_path / "run2", epochs=1))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "study_0001/t1.nii.gz" in err
