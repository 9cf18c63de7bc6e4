"""Synthetic brain volumes and writers (NIfTI via nibabel, DICOM series via pydicom) for tests and the demo.

* ``phantom(shape, lesion=None|"left"|"right", modality="mri"|"ct", seed)``: an array ``[x, y, z]`` in RAS
  voxel order: an ellipsoidal "brain" (MRI: ~100 with noise, CT: ~35 HU inside a ~1000 HU skull ring in
  ~-1000 HU air) and, if asked, a bright spherical lesion in the left (low x) or right (high x) hemisphere
  (MRI: ~250, CT: ~75 HU, an acute bleed). The answer to "which hemisphere?" is in the voxels only.
* ``save_nifti(array, path, spacing, axcodes="RAS")``: writes the RAS-ordered array re-laid out in another
  voxel orientation (e.g. "LPI", "PSR") with the matching affine, so every file shows the same anatomy.
* ``write_dicom_series(array, folder, spacing, ...)``: one CT/MR slice file per z, axial (LPS IOP 1,0,0,0,1,0),
  stored integers with RescaleSlope/RescaleIntercept so the reader must apply them once; files named in a
  shuffled order so a reader that sorts by name or InstanceNumber would go wrong.
"""
from __future__ import annotations

import os
import random

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


def phantom(shape=(40, 48, 40), lesion: str | None = None, modality: str = "mri", seed: int = 0,
            lesion_radius: float = 0.18) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    jitter = rng.uniform(-0.05, 0.05, 3)
    r = np.sqrt(((x - jitter[0]) / 0.8) ** 2 + ((y - jitter[1]) / 0.85) ** 2 + ((z - jitter[2]) / 0.75) ** 2)
    brain = r < 1.0
    if modality == "ct":
        vol = np.full(shape, -1000.0)
        vol[(r >= 1.0) & (r < 1.12)] = 1000.0 + rng.normal(0, 50, ((r >= 1.0) & (r < 1.12)).sum())
        vol[brain] = 35.0 + rng.normal(0, 4, brain.sum())
        bright = 75.0
    else:
        vol = rng.normal(0, 3, shape).clip(0)
        vol[brain] = 100.0 + rng.normal(0, 8, brain.sum())
        bright = 250.0
    if lesion is not None:
        if lesion not in ("left", "right"):
            raise ValueError(f"lesion must be None, 'left' or 'right', got {lesion!r}")
        cx = rng.uniform(0.3, 0.5) * (1 if lesion == "right" else -1)  # RAS: +x is the patient's right
        cy, cz = rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.25)
        les = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < lesion_radius ** 2
        vol[les & brain] = bright + rng.normal(0, 5 if modality == "ct" else 10, (les & brain).sum())
    return vol.astype(np.float32)


def save_nifti(array: np.ndarray, path: str, spacing=(1.0, 1.0, 1.0), axcodes: str = "RAS",
               origin=(0.0, 0.0, 0.0)) -> str:
    """Save a RAS-ordered ``[x, y, z(, t)]`` array with its voxels laid out as ``axcodes``."""
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = origin
    xform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                            nib.orientations.axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(array, xform)
    affine = ras @ nib.orientations.inv_ornt_aff(xform, array.shape[:3])
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp" + (".nii.gz" if path.endswith(".gz") else ".nii")
    nib.save(img, tmp)
    os.replace(tmp, path)
    return path


def write_dicom_series(array: np.ndarray, folder: str, spacing=(1.0, 1.0, 2.0), *, modality: str = "CT",
                       slope: float = 1.0, intercept: float = -1024.0, origin=(0.0, 0.0, 0.0),
                       series_uid: str | None = None, seed: int = 0) -> str:
    """Write a RAS ``[x, y, z]`` array as an axial DICOM series (one file per z) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    nx, ny, nz = array.shape
    # LPS axial: column index i runs to patient Left (-x in RAS), row index j runs Posterior (-y in RAS)
    lps = array[::-1, ::-1, :]
    stored = np.rint((lps - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this slope/intercept")
    names = [f"IM{n:04d}" for n in random.Random(seed).sample(range(1000, 9999), nz)]
    x0 = origin[0] + (nx - 1) * spacing[0]  # RAS x of voxel i=0 in LPS order (the right-most column), as LPS: -x
    y0 = origin[1] + (ny - 1) * spacing[1]
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(os.path.join(folder, names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = modality, study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber = 1, nz - k  # deliberately reversed: readers must sort by position
        ds.PatientID, ds.SeriesDescription = "SYNTH", "synthetic phantom"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-x0, -y0, origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # [row spacing (along y), column spacing (along x)]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<i2")).tobytes()  # [rows=j, cols=i]
        ds.save_as(os.path.join(folder, names[k]), enforce_file_format=True)
    return folder
