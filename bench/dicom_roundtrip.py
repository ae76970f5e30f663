"""DICOM round trip on real scanner headers: enhance a crop of the 5 mm chest series to NRRD and to DICOM,
validate the series with dciodvfy, read it back with pydicom and SimpleITK and compare with the NRRD.

    python bench/dicom_roundtrip.py [--iterations 100] [--keep DIR]

The crop (slices 20-31, 160 x 160 pixels) keeps the real patient, study and frame-of-reference tags;
as a crop it gets new series and instance UIDs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SR4ZCT"))
from SR4ZCTLib import cli  # noqa: E402

from common import workdir  # noqa: E402

CHEST = ROOT.parent / "shared" / "data" / "chest_ct_5mm"
SLICES, ROWS, COLUMNS = range(20, 32), slice(180, 340), slice(176, 336)


def crop_series(folder: Path) -> Path:
    """Slices 20-31 of the chest series, 160 x 160 pixels, with ImagePositionPatient moved to the crop's corner."""
    folder.mkdir(parents=True)
    series = generate_uid()
    for number in SLICES:
        ds = pydicom.dcmread(str(CHEST / f"1-{number + 1:02d}.dcm"))
        pixels = ds.pixel_array[ROWS, COLUMNS]
        spacing = [float(v) for v in ds.PixelSpacing]
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        corner = (np.array([float(v) for v in ds.ImagePositionPatient]) + COLUMNS.start * spacing[1] * orientation[:3]
                  + ROWS.start * spacing[0] * orientation[3:])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in corner]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(str(folder / f"{number:03d}.dcm"))
    return folder


def main() -> None:
    import SimpleITK as sitk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--keep", help="copy the DICOM result here")
    args = parser.parse_args()
    folder = workdir()
    source = crop_series(folder / "chest_crop")
    common = ["--iterations", str(args.iterations), "--device", "cpu", "--progress", "none"]
    assert cli.main(["enhance", str(source), "-o", str(folder / "enhanced.nrrd"), "--save-model",
                     str(folder / "model.pt"), *common]) == 0
    assert cli.main(["enhance", str(source), "-o", str(folder / "series"), "--model", str(folder / "model.pt"),
                     *common]) == 0
    files = sorted((folder / "series").iterdir())
    errors = []
    for path in files:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors += [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    nrrd = sitk.ReadImage(str(folder / "enhanced.nrrd"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "series")))
    series = reader.Execute()
    first, original = pydicom.dcmread(str(files[0])), pydicom.dcmread(str(sorted(source.iterdir())[0]))
    print(f"files: {len(files)}; dciodvfy errors: {len(errors)}")
    print(f"SimpleITK vs NRRD: size {series.GetSize()} vs {nrrd.GetSize()}, "
          f"origin diff {np.abs(np.subtract(series.GetOrigin(), nrrd.GetOrigin())).max():.2e} mm, "
          f"spacing diff {np.abs(np.subtract(series.GetSpacing(), nrrd.GetSpacing())).max():.2e} mm, "
          f"direction diff {np.abs(np.subtract(series.GetDirection(), nrrd.GetDirection())).max():.2e}, "
          f"voxels equal: {np.array_equal(sitk.GetArrayFromImage(series), sitk.GetArrayFromImage(nrrd))}")
    for tag in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "SeriesDescription",
                "ImageType", "SliceThickness", "SpacingBetweenSlices", "WindowCenter", "WindowWidth",
                "RescaleIntercept", "RescaleSlope", "DerivationDescription"):
        value, was = first.get(tag), original.get(tag)
        print(f"{tag:22s} {str(value.value if hasattr(value, 'value') else value)[:70]:72s}"
              f"{'(same as source)' if str(value) == str(was) else ''}")
    print(f"SourceImageSequence of instance 1: {[i.ReferencedSOPInstanceUID[-12:] for i in first.SourceImageSequence]}")
    if args.keep:
        shutil.copytree(folder / "series", args.keep)


if __name__ == "__main__":
    main()
