"""The bundled demo sample: a real 5 mm chest CT, cropped (credit in data/chest_ct_5mm_crop.json)."""

from __future__ import annotations

import json
from pathlib import Path

from .core.volume import Volume
from .io.volumes import read_volume

SAMPLE_PATH = Path(__file__).with_name("data") / "chest_ct_5mm_crop.nrrd"


def sample_info() -> dict:
    """Description, slice thickness and credit of the bundled sample."""
    return json.loads(SAMPLE_PATH.with_suffix(".json").read_text())


def load_sample() -> Volume:
    """The sample with the SliceThickness its DICOM series recorded (NRRD itself has no such field)."""
    volume = read_volume(SAMPLE_PATH)
    volume.slice_thickness_mm = float(sample_info()["slice_thickness_mm"])
    volume.slice_axis = 2
    volume.source = "dicom"
    return volume
