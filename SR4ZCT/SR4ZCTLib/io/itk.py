"""NRRD, NIfTI and MetaImage files (SimpleITK), read and written strictly: size against the header, full decompression.

ITK reads a truncated NIfTI or MetaImage without complaint (missing voxels become 0) and may write
one short when the disk is full, so every NRRD, NIfTI and MetaImage file is checked here: the data
the header announces must all be present (raw: file size; gzip/zlib/bzip2: the whole stream
decompresses to at least that many bytes). Detached data files must lie in the header's folder.
"""

from __future__ import annotations

import bz2
import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import numpy as np

from ..core.acquisition import Acquisition
from ..core.volume import Volume
from ..errors import InputError

CHUNK = 1 << 20
NRRD_TYPE_BYTES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
# What `sr4zct simulate` records: NRRD key/value fields (`sr4zct_thickness_mm:=3`) and MetaImage header lines
# (`sr4zct_thickness_mm = 3`); NIfTI has no free fields, so there the same `key=value;...` text is its
# 80-character `descrip` field (ITK_FileNotes on writing). All round-trip through SimpleITK.
RECORDED_FIELDS = ("sr4zct_thickness_mm", "sr4zct_increment_mm", "sr4zct_profile")
NIFTI_NOTES = "ITK_FileNotes"
META_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


def _truncated(path: Path, have: int, need: int, what: str = "bytes of voxel data") -> InputError:
    return InputError(f"{path.name} is truncated: it holds {have} of the {need} {what} its header announces; "
                      "copy or export the file again (an interrupted download or a full disk?)")


def _stream_size(handle: BinaryIO, path: Path, decompressor: Optional[Callable]) -> int:
    """Bytes the rest of handle yields: raw, or completely decompressed (refusing an unfinished stream)."""
    if decompressor is None:
        start = handle.tell()
        handle.seek(0, 2)
        return handle.tell() - start
    engine, total = decompressor(), 0
    try:
        while chunk := handle.read(CHUNK):
            total += len(engine.decompress(chunk))
            if engine.eof:
                break
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise InputError(f"{path.name}: the compressed voxel data is damaged ({error}); copy or export it again") from None
    if not engine.eof:
        raise InputError(f"{path.name} is truncated: its compressed voxel data ends before the end of the stream; "
                         "copy or export the file again (an interrupted download or a full disk?)")
    return total


def _decompressor(encoding: str) -> Optional[Callable]:
    if encoding in ("gz", "gzip", "zlib"):
        return lambda: zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    if encoding in ("bz2", "bzip2"):
        return bz2.BZ2Decompressor
    return None


def _data_file(header_path: Path, name: str, allow_external_data: bool) -> Path:
    """The detached data file, refused when it lies outside the header's own folder (unless allowed)."""
    folder = header_path.resolve().parent
    target = (folder / name).resolve()
    if not allow_external_data and not target.is_relative_to(folder):
        raise InputError(f"{header_path.name} points its voxel data at {name}, outside the header's folder {folder}; "
                         "move the data file next to the header, or pass --allow-external-data if you trust it")
    if not target.is_file():
        raise InputError(f"{header_path.name} points its voxel data at {name}, which does not exist; "
                         "keep the header and its data file together")
    return target


def read_text_header(path: Path, separator: str) -> tuple[dict[str, str], int]:
    """Key/value lines up to the first blank line (NRRD) or the ElementDataFile line (MetaImage); and its end."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as handle:
        for index, raw in enumerate(handle):
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if separator == ":" and index == 0:
                if not line.startswith("NRRD"):
                    raise InputError(f"{path.name} does not start with a NRRD magic line; is it a NRRD file?")
                continue
            if separator == ":" and not line:
                break
            if line.startswith("#") or separator not in line:
                continue
            key, _, value = line.partition(":=" if ":=" in line and separator == ":" else separator)
            fields[key.strip().lower()] = value.strip()
            if separator == "=" and key.strip().lower() == "elementdatafile":
                break
            if offset > 1 << 20:
                raise InputError(f"{path.name}: header longer than 1 MiB; this is not a volume header")
    return fields, offset


def detached_data_file(header_path: Path) -> Optional[Path]:
    """The data file a .nhdr/.mhd header names (None when the voxels are in the header's own file)."""
    fields, _ = read_text_header(header_path, ":" if header_path.name.lower().endswith(".nhdr") else "=")
    name = fields.get("data file", fields.get("datafile", fields.get("elementdatafile")))
    return header_path.parent / name if name and name.upper() not in ("LOCAL", "LIST") else None


def _positive_ints(path: Path, text: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise InputError(f"{path.name}: header field {field} {text!r} is not a list of whole numbers") from None
    if not values or min(values) < 1:
        raise InputError(f"{path.name}: header field {field} {text!r} must list positive sizes")
    return values


def _check_nrrd(path: Path, allow_external_data: bool) -> None:
    fields, header_end = read_text_header(path, ":")
    type_name = fields.get("type", "").lower()
    item = next((size for size, names in NRRD_TYPE_BYTES.items() if type_name in names), None)
    encoding = fields.get("encoding", "raw").lower()
    sizes = _positive_ints(path, fields.get("sizes", ""), "sizes")
    name = fields.get("data file", fields.get("datafile"))
    if name is not None and (len(name.split()) > 1 or name.upper().startswith("LIST")):
        raise InputError(f"{path.name} spreads its voxels over several data files; SR4ZCT reads one data file per "
                         "header: convert the volume to a single .nrrd file")
    data, offset = (_data_file(path, name, allow_external_data), 0) if name is not None else (path, header_end)
    if item is None or encoding not in ("raw", "gz", "gzip", "bz2", "bzip2"):
        return  # text encodings: ITK parses every number and fails on a short file itself
    skip = max(0, int(fields.get("byte skip", fields.get("byteskip", "0")) or 0))
    need = math.prod(sizes) * item
    with open(data, "rb") as handle:
        handle.seek(offset)
        have = _stream_size(handle, data, _decompressor(encoding)) - skip
    if have < need:
        raise _truncated(data, max(have, 0), need)


def _check_metaimage(path: Path, allow_external_data: bool) -> None:
    fields, header_end = read_text_header(path, "=")
    sizes = _positive_ints(path, fields.get("dimsize", ""), "DimSize")
    item = META_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    name = fields.get("elementdatafile")
    if name is None:
        raise InputError(f"{path.name} has no ElementDataFile line; the MetaImage header is incomplete")
    if name.upper() == "LIST" or len(name.split()) > 1:
        raise InputError(f"{path.name} spreads its voxels over several data files; SR4ZCT reads one data file per "
                         "header: convert the volume to a single .mha file")
    data, offset = (path, header_end) if name.upper() == "LOCAL" else (_data_file(path, name, allow_external_data), 0)
    header_size = int(fields.get("headersize", "0") or 0)
    if item is None or header_size < 0:  # -1: the data ends the file, however long the header before it
        return
    offset = offset if name.upper() == "LOCAL" else header_size
    compressed = fields.get("compresseddata", "false").lower() == "true"
    need = math.prod(sizes) * item * channels
    with open(data, "rb") as handle:
        handle.seek(offset)
        have = _stream_size(handle, data, _decompressor("zlib") if compressed else None)
    if have < need:
        raise _truncated(data, have, need)


def _nifti_layout(header: bytes, path: Path) -> tuple[str, int, int]:
    """(byte order, bytes of voxel data, offset of the voxel data) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = max(352, int(struct.unpack(order + "f", header[108:112])[0]))
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(544, struct.unpack(order + "q", header[168:176])[0])
            break
    else:
        raise InputError(f"{path.name} does not start with a NIfTI header (it is shorter than one, or damaged); "
                         "copy or export the file again")
    count = dims[0]
    if not 1 <= count <= 7 or min(dims[1:count + 1]) < 1 or bitpix < 1:
        raise InputError(f"{path.name}: the NIfTI header has impossible dimensions {dims[1:count + 1]}; the file is damaged")
    return order, math.prod(dims[1:count + 1]) * bitpix // 8, offset


def _check_nifti(path: Path, compressed: bool) -> bytes:
    """Refuse a NIfTI whose voxel data is shorter than its header says; returns the header bytes."""
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(544)
            if compressed:
                total = len(header)
                while chunk := handle.read(CHUNK):
                    total += len(chunk)
            else:
                handle.seek(0, 2)
                total = handle.tell()
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path.name} is truncated or damaged ({error}); copy or export the file again") from None
    _, need, offset = _nifti_layout(header, path)
    if total - offset < need:
        raise _truncated(path, max(total - offset, 0), need)
    return header


def check_volume_file(path: Path, allow_external_data: bool = False) -> None:
    """Refuse a NRRD/NIfTI/MetaImage file that is truncated or whose data file lies elsewhere."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, allow_external_data)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, allow_external_data)
    elif name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name.endswith(".gz"))


def _quaternion_matrix(b: float, c: float, d: float) -> np.ndarray:
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])


def nifti_transforms(path: Path) -> Optional[dict[str, np.ndarray]]:
    """The qform and sform (IJK to RAS, 4x4) of a NIfTI-1 file whose codes are both set, else None."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(348)
    order = next((o for o in "<>" if len(header) == 348 and struct.unpack(o + "i", header[:4])[0] == 348), None)
    if order is None:
        return None
    qform_code, sform_code = struct.unpack(order + "2h", header[252:256])
    if qform_code <= 0 or sform_code <= 0:
        return None
    pixdim = struct.unpack(order + "8f", header[76:108])
    b, c, d, *offset = struct.unpack(order + "6f", header[256:280])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    qform = np.eye(4)
    qform[:3, :3] = _quaternion_matrix(b, c, d) @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
    qform[:3, 3] = offset
    sform = np.eye(4)
    sform[:3] = np.array(struct.unpack(order + "12f", header[280:328])).reshape(3, 4)
    return {"qform": qform, "sform": sform}


def qform_sform_note(path: Path, shape_kji: tuple[int, ...], ijk_to_lps: np.ndarray) -> Optional[str]:
    """A warning when a NIfTI's qform and sform place the volume differently, naming the one ITK used."""
    transforms = nifti_transforms(path)
    if transforms is None:
        return None
    corners = np.array([[i, j, k, 1.0] for i in (0, shape_kji[2] - 1) for j in (0, shape_kji[1] - 1)
                        for k in (0, shape_kji[0] - 1)]).T
    positions = {name: (matrix @ corners)[:3] for name, matrix in transforms.items()}
    apart = float(np.max(np.linalg.norm(positions["qform"] - positions["sform"], axis=0)))
    spacing = float(np.min(np.linalg.norm(ijk_to_lps[:3, :3], axis=0)))
    if apart <= 0.1 * spacing:
        return None
    used = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps @ corners  # what ITK read, in RAS
    chosen = min(positions, key=lambda name: float(np.max(np.abs(positions[name] - used[:3]))))
    return (f"{path.name}: the NIfTI qform and sform disagree (corners up to {apart:.1f} mm apart); the {chosen} was "
            "used. Check the orientation against another viewer, or fix the header")


def acquisition_fields(acquisition: Optional[Acquisition]) -> dict[str, str]:
    """The header fields that record a simulated acquisition (6 significant digits: NIfTI's descrip holds 80 bytes)."""
    if acquisition is None:
        return {}
    return dict(zip(RECORDED_FIELDS, (f"{acquisition.thickness_mm:.6g}", f"{acquisition.increment_mm:.6g}",
                                      acquisition.profile)))


def recorded_acquisition(image, path: Path) -> Optional[Acquisition]:
    """The acquisition a `simulate` header records (key/value fields, or NIfTI descrip), None when there is none."""
    values = {key: image.GetMetaData(key) for key in RECORDED_FIELDS if image.HasMetaDataKey(key)}
    if not values and image.HasMetaDataKey("descrip"):
        words = (word.partition("=") for word in image.GetMetaData("descrip").split(";"))
        values = {key.strip(): value.strip() for key, _, value in words if key.strip() in RECORDED_FIELDS}
    if not values:
        return None
    missing = [key for key in RECORDED_FIELDS if key not in values]
    try:
        if missing:
            raise ValueError(f"{', '.join(missing)} missing")
        return Acquisition(float(values[RECORDED_FIELDS[0]]), float(values[RECORDED_FIELDS[1]]), values[RECORDED_FIELDS[2]])
    except (ValueError, InputError) as error:
        raise InputError(f"{path.name}: the sr4zct_* header fields are damaged ({error}); remove them or give "
                         "--thickness and --increment after fixing the file") from None


def read_image_file(path: Path, allow_external_data: bool = False) -> Volume:
    """A NRRD/NIfTI/MetaImage file as it is (any shape), after the strict size and decompression checks."""
    import SimpleITK as sitk

    path = Path(path)
    check_volume_file(path, allow_external_data)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(f"cannot read {path.name}: {first_line}; check that the file is a complete volume") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "SR4ZCT needs a scalar CT volume"
        )
    array = sitk.GetArrayFromImage(image)
    if array.ndim != 3:
        return Volume(array=array, ijk_to_world=np.eye(4), source="file", extra={"path": str(path), "notes": []})
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("=")))
    directions = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = Volume.matrix_from(image.GetOrigin(), image.GetSpacing(), directions)
    notes = []
    if path.name.lower().endswith((".nii", ".nii.gz")):
        notes = [note for note in [qform_sform_note(path, array.shape, matrix)] if note]
    recorded = recorded_acquisition(image, path)
    return Volume(array=array, ijk_to_world=matrix, slice_thickness_mm=recorded.thickness_mm if recorded else None,
                  source="file", extra={"path": str(path), "notes": notes}, recorded_acquisition=recorded)


def stage_image_file(publication, volume: Volume, path: Path) -> None:
    """Write volume to path's temporary file with its exact LPS geometry and verify it by reading it back."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.directions.ravel()])
    fields = acquisition_fields(volume.recorded_acquisition)
    for key, value in fields.items():
        image.SetMetaData(key, value)
    if fields and Path(path).name.lower().endswith((".nii", ".nii.gz")):
            image.SetMetaData(NIFTI_NOTES, ";".join(f"{key}={value}" for key, value in fields.items()))

    def verify(name: str) -> None:
        written = read_image_file(Path(name))
        if (written.array.shape != volume.array.shape or written.array.dtype != volume.array.dtype
                or acquisition_fields(written.recorded_acquisition) != fields
                or not np.allclose(written.ijk_to_world, volume.ijk_to_world, atol=1e-4)
                or not np.array_equal(written.array, volume.array, equal_nan=True)):
            raise InputError("the file read back differs from what was written")

    publication.stage(path, lambda name: sitk.WriteImage(image, name, useCompression=True), verify)
