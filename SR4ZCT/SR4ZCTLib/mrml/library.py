"""A library of trained models, one per protocol: a model file and a small JSON record of what it fits.

Keyed by slice thickness, increment, in-plane pixel size, slice profile and preset, so a model trained on one scan
of a protocol can enhance the next scan of the same protocol in seconds. Listing reads only the JSON records (no
torch import: the panel lists models while fields change); the worker writes and checks the model file itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

LIBRARY_FORMAT = "sr4zct-model-library-1"
MATCH_MM = 0.05  # model.ACQUISITION_MATCH_MM: the engine reuses a model only this close (a test ties them)
MATCH_PIXEL_FRACTION = 0.02  # model.TrainedModel.check_matches: in-plane spacing within 2 %


@dataclass(frozen=True)
class LibraryModel:
    """One model of the library: its file and the protocol it was trained for."""

    model_file: str  # absolute path of the model file
    thickness_mm: float
    increment_mm: float
    pixel_mm: float  # the finer in-plane spacing it was trained at
    profile: str
    preset: str
    created_utc: str = ""
    input: str = ""  # the volume it was trained on
    validation_psnr_db: Optional[float] = None

    def fits(self, thickness_mm: float, increment_mm: float, pixel_mm: float, profile: str) -> bool:
        """True when the engine will accept this model for that acquisition and pixel size."""
        return (abs(self.thickness_mm - thickness_mm) <= MATCH_MM and abs(self.increment_mm - increment_mm) <= MATCH_MM
                and abs(self.pixel_mm - pixel_mm) <= MATCH_PIXEL_FRACTION * pixel_mm and self.profile == profile)

    def label(self) -> str:
        """How the panel lists it."""
        made = f", {self.created_utc[:10]}" if self.created_utc else ""
        source = f" from {self.input}" if self.input else ""
        return (f"{self.thickness_mm:g} mm every {self.increment_mm:g} mm, {self.pixel_mm:.2f} mm pixels, "
                f"{self.profile}, {self.preset}{source}{made}")


class ModelLibrary:
    """The models in one folder (created on first save)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def models(self) -> list[LibraryModel]:
        """Every model whose record and file are both there, newest first (unreadable records are skipped)."""
        found = []
        for record in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                values = json.loads(record.read_text())
                if values.pop("format", None) != LIBRARY_FORMAT:
                    continue
                model = LibraryModel(**{**values, "model_file": str(self.folder / values["model_file"])})
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if Path(model.model_file).is_file():
                found.append(model)
        return sorted(found, key=lambda m: m.created_utc, reverse=True)

    def fitting(self, thickness_mm: float, increment_mm: float, pixel_mm: float, profile: str) -> list[LibraryModel]:
        """The models the engine will accept for this acquisition and pixel size."""
        return [m for m in self.models() if m.fits(thickness_mm, increment_mm, pixel_mm, profile)]

    def new_model_path(self, thickness_mm: float, increment_mm: float, pixel_mm: float, profile: str,
                       preset: str) -> Path:
        """A model file name not yet taken, named after its key; the folder is created."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = (f"{thickness_mm:g}mm_every_{increment_mm:g}mm_{pixel_mm:.3f}mm_{profile}_{preset}_"
                f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        path, count = self.folder / f"{stem}.pt", 1
        while path.exists() or path.with_suffix(".json").exists():
            count += 1
            path = self.folder / f"{stem}_{count}.pt"
        return path

    def register(self, model: LibraryModel) -> None:
        """Write the model's record beside its file (after the worker wrote and verified the file)."""
        path = Path(model.model_file)
        values = {**asdict(model), "model_file": path.name, "format": LIBRARY_FORMAT}
        staged = path.with_suffix(".json.partial")
        staged.write_text(json.dumps(values, sort_keys=True, allow_nan=False))
        os.replace(staged, path.with_suffix(".json"))
