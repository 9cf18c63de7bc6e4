"""Training checkpoints as NeuroVFM lays them out (``exp_root/models/{best-<metric>,last,epoch-XX}.ckpt``), but each
``.ckpt`` is ONE safetensors file: the system's tensors under their module names (``student_encoder.*``,
``teacher_encoder.*``, ``predictor.*`` / ``backbone.*``, ``pooler.*``), the optimiser's tensors under
``optimizer.<param>.<name>``, and a small JSON state (epoch, step, best metric, optimiser hyper-parameters,
scheduler and grad-scaler state) in the file's metadata. A ``<name>.json`` copy of that state sits beside it for
people. Loading never unpickles anything; writing goes to a temporary file and ``os.replace`` (a kill -9 leaves
the previous checkpoint intact).
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "patches.neuro.train/ckpt-v1"


class CheckpointError(ValueError):
    """An unreadable or mismatching checkpoint (message names the file)."""


def _atomic_write(path: str, write) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: str, system: torch.nn.Module, optimizer, state: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in system.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, st in opt["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optimizer.{idx}.{name}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = val
    full = dict(state, format=FORMAT, optimizer={"param_groups": opt["param_groups"], "scalars": scalars})
    blob = json.dumps(full)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": blob, "format": FORMAT}))
    side = os.path.splitext(path)[0] + ".json"
    _atomic_write(side, lambda tmp: _write_text(tmp, json.dumps(full, indent=1)))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of a checkpoint written by ``save_checkpoint``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001  (safetensors raises several types; all mean "not our file")
        raise CheckpointError(f"{path}: not a patches.neuro.train checkpoint (safetensors: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a patches.neuro.train checkpoint (format {meta.get('format')!r})")
    return tensors, json.loads(meta["state"])


def restore(path: str, system: torch.nn.Module, optimizer) -> dict:
    """Load system + optimiser from ``path`` (strict); returns the JSON state."""
    tensors, state = read_checkpoint(path)
    model = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    missing, unexpected = set(system.state_dict()) - set(model), set(model) - set(system.state_dict())
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match this config's model (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    system.load_state_dict(model, strict=True)
    per: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, name = k.split(".", 2)
            per.setdefault(int(idx), {})[name] = v
    for k, v in state["optimizer"]["scalars"].items():
        idx, name = k.split(".", 1)
        per.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": per, "param_groups": state["optimizer"]["param_groups"]})
    return state
