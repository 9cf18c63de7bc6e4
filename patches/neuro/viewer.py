"""The ``volume`` viewer for the web demo and the HTML report: three orthogonal slices (axial, coronal, sagittal)
through one point, a slice position, and CT window presets.

Volumes are read with ``volume_io.read_volume`` (NIfTI files, DICOM series folders; the same validation as the
reader) and reoriented to RAS by axis permutation/flip (``nibabel.orientations``), so the slices look the same
whatever the file's voxel order. Windows: the plugin's CT windows (``preprocess.CT_WINDOWS``: brain, blood,
bone, as level -/+ width/2 in HU) and ``auto`` (0.5-99.5 percentiles, what MRI uses); CT (air below -500 HU)
opens in the brain window, anything else in ``auto``. 4D series show frame 0.
"""
from __future__ import annotations

import os

import numpy as np

from internvl.serve.viewers import MediaViewer, ViewerError, ViewState, register_viewer
from patches.neuro.preprocess import CT_WINDOWS
from patches.neuro.volume_io import VolumeError

VOLUME_SUFFIXES = (".nii", ".nii.gz")
AUTO = "auto"


@register_viewer("volume")
class VolumeViewer(MediaViewer):
    kind = "volume"
    controls = ("slice", "window")
    window_presets = (AUTO, *CT_WINDOWS)
    priority = 10

    def accepts(self, path: str) -> bool:
        if os.path.isdir(path):
            return any(f.lower().endswith(".dcm") for f in os.listdir(path))
        return path.lower().endswith(VOLUME_SUFFIXES)

    def open(self, path: str) -> dict:
        import nibabel as nib

        from patches.neuro.volume_io import read_volume

        try:
            vol = read_volume(path, ndim=(3, 4))
        except VolumeError as exc:
            raise ViewerError(str(exc)) from exc
        data = vol.array[..., 0] if vol.array.ndim == 4 else vol.array
        ornt = nib.orientations.io_orientation(vol.affine)
        data = nib.orientations.apply_orientation(np.asarray(data, dtype=np.float32), ornt)
        return {"data": data, "spacing": vol.spacing, "axcodes": vol.axcodes, "path": path}

    def info(self, handle: dict) -> str:
        shape = "x".join(str(s) for s in handle["data"].shape)
        return f"volume {shape} voxels (shown as RAS), file axes {''.join(handle['axcodes'])}, " \
               f"spacing {tuple(round(float(s), 3) for s in handle['spacing'][:3])} mm"

    def close(self, handle) -> None:
        pass

    def default_window(self, handle: dict) -> str:
        """``brain`` for CT (values below -500 HU: air), else ``auto``."""
        return "brain" if float(handle["data"].min()) < -500 else AUTO

    def window(self, data: np.ndarray, name: str | None) -> tuple[float, float]:
        if name in CT_WINDOWS:
            return CT_WINDOWS[name]
        lo, hi = np.percentile(data, [0.5, 99.5])
        return float(lo), float(hi) if hi > lo else float(lo) + 1.0

    def render(self, handle: dict, state: ViewState):
        from PIL import Image

        data = handle["data"]
        lo, hi = self.window(data, state.window or self.default_window(handle))
        pos = [min(n - 1, max(0, round(state.slice * (n - 1)))) for n in data.shape]
        views = [data[:, :, pos[2]], data[:, pos[1], :], data[pos[0], :, :]]  # axial, coronal, sagittal
        tiles = []
        for v in views:
            grey = (np.clip((v - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            tiles.append(Image.fromarray(np.rot90(grey)).convert("RGB"))  # superior / anterior up
        side = max(16, state.size // 3)
        out = Image.new("RGB", (side * 3, side), "black")
        for i, tile in enumerate(tiles):
            scale = side / max(tile.size)  # up or down: small volumes fill their panel
            tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                               Image.Resampling.BILINEAR)
            out.paste(tile, (i * side + (side - tile.width) // 2, (side - tile.height) // 2))
        return out
