"""The Slicer side of the engine that needs MRML but no Qt: volume nodes in and out, DICOM thickness.

Runs under real Slicer and under the PyPI package slicer-core (real MRML, no Qt), where the tests
exercise it. `slicer` is imported only inside these functions, so the rest of the engine never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import InputError
from ..core.volume import Volume, read_through_plane_geometry

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SLICE_THICKNESS_TAG = "0018,0050"

# (instance UID) -> SliceThickness text, or "" / None when absent; in Slicer built from slicer.dicomDatabase
DicomValueLookup = Callable[[str], Optional[str]]


def _open_dicom_database():
    """slicer.dicomDatabase when there is one and it is open (a closed one answers every query with an SQL error)."""
    import slicer

    database = getattr(slicer, "dicomDatabase", None)
    return database if database is not None and database.isOpen else None


def slicer_dicom_lookup() -> Optional[DicomValueLookup]:
    """The SliceThickness lookup through Slicer's DICOM database, or None where there is none or it is closed."""
    database = _open_dicom_database()
    if database is None:
        return None

    def lookup(uid: str) -> Optional[str]:
        file = database.fileForInstance(uid)
        return database.fileValue(file, SLICE_THICKNESS_TAG) if file else None

    return lookup


def dicom_slice_thickness(node, lookup: Optional[DicomValueLookup]) -> Optional[float]:
    """SliceThickness (0018,0050) of the first instance the node was loaded from, or None."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or lookup is None:
        return None
    text = lookup(uids[0])
    try:
        value = float(str(text).split("\\")[0]) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node, lookup: Optional[DicomValueLookup] = None) -> Volume:
    """A Volume (RAS geometry) with a copy of the node's voxels; the node is not touched."""
    import slicer.util

    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("select a scalar volume node as input (not a label map, segmentation or vector volume)")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{node.GetName()} is a label map, not a CT image; select the CT volume")
    if node.GetImageData() is None:
        raise InputError(f"{node.GetName()} has no image data; load a CT volume first")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    thickness = dicom_slice_thickness(node, lookup)
    from_dicom = bool(node.GetAttribute("DICOM.instanceUIDs"))
    return Volume(array=array, ijk_to_world=ijk_to_ras(node), slice_thickness_mm=thickness,
                  source="mrml", slice_axis=2 if from_dicom else None, extra={"name": node.GetName()})


@dataclass(frozen=True)
class NodeAcquisition:
    """What the panel shows of an input node: in-plane spacing, thickness and increment with their sources and
    notes; or, as `error`, why the node cannot be used."""

    in_plane_spacing_mm: tuple = ()
    thickness_mm: Optional[float] = None
    increment_mm: Optional[float] = None
    thickness_source: str = ""
    increment_source: str = ""
    warnings: tuple = ()
    error: Optional[str] = None
    shape: tuple = ()  # the (k, j, i) array's shape
    array_axis: int = 0  # its through-plane numpy axis

    @property
    def usable(self) -> bool:
        return self.error is None


def node_geometry(node, thickness_mm: Optional[float] = None, increment_mm: Optional[float] = None,
                  profile: Optional[str] = None, lookup: Optional[DicomValueLookup] = None):
    """(geometry, warnings) for a node: what the module panel shows."""
    return read_through_plane_geometry(volume_from_node(node, lookup), thickness_mm, increment_mm, profile)


def set_ijk_to_ras(node, matrix: np.ndarray) -> None:
    import vtk

    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix[r, c]))
    node.SetIJKToRASMatrix(vtk_matrix)


def node_from_volume(volume: Volume, scene, name: str, reference=None, output_node=None):
    """Put a RAS Volume into output_node, or a new scalar volume node added to the scene; returns the node.

    The result goes under the reference's parent transform (its geometry is in the reference's own frame, as
    the worker saw it), and its window/level follows the reference's, so it lies and looks like the input.
    """
    import slicer.util

    node = output_node or scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    try:
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
        set_ijk_to_ras(node, volume.ijk_to_world)
    except BaseException:
        if output_node is None:  # leave no half-made node behind
            scene.RemoveNode(node)
        raise
    if reference is not None:
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        place_beside(node, reference)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    reference_display = reference.GetDisplayNode() if reference is not None else None
    if reference_display is not None and node.GetDisplayNode() is not None:
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(reference_display.GetAutoWindowLevel())
        display.SetWindowLevel(reference_display.GetWindow(), reference_display.GetLevel())
        if reference_display.GetColorNodeID():
            display.SetAndObserveColorNodeID(reference_display.GetColorNodeID())
    return node


def lps_to_ras(volume: Volume) -> Volume:
    """The same voxels with world coordinates changed from LPS (files) to RAS (Slicer)."""
    return Volume(volume.array, RAS_FROM_LPS @ volume.ijk_to_world, volume.slice_thickness_mm, volume.source,
                  volume.slice_axis, dict(volume.extra))


def write_node(node, path: str) -> None:
    """Write a volume node with MRML's own storage node (as Slicer's Save dialog does); the node is unchanged."""
    scene = node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(node):
            raise InputError(f"could not write {node.GetName()} to {path}; check free disk space")
    finally:
        scene.RemoveNode(storage)


CONFIDENCE_COLOURS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLPETProceduralColorNodePET-Heat",
                      "vtkMRMLColorTableNodeRainbow")  # the first one the scene has colours the confidence map


def add_confidence_node(volume: Volume, scene, result_node, name: str = "SR4ZCT confidence"):
    """The disagreement map (HU, RAS Volume) as a colour-mapped node linked to the result; returns the node."""
    node = node_from_volume(volume, scene, name, reference=result_node)
    try:
        node.SetAttribute("SR4ZCT.confidenceOf", result_node.GetID())
        display = node.GetDisplayNode()
        colour = next((scene.GetNodeByID(i) for i in CONFIDENCE_COLOURS if scene.GetNodeByID(i) is not None), None)
        if display is not None:
            if colour is not None:
                display.SetAndObserveColorNodeID(colour.GetID())
            top = max(float(np.percentile(volume.array, 99.5)), 1.0)
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, top)
    except BaseException:  # leave no half-made node behind
        scene.RemoveNode(node)
        raise
    return node


def place_beside(node, reference) -> None:
    """Put node in the reference's study in the subject hierarchy, so Slicer's DICOM export files it there."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    reference_item = hierarchy.GetItemByDataNode(reference) if hierarchy is not None else 0
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)


PROVENANCE_ATTRIBUTE = "SR4ZCT.provenance"  # strict JSON: how the result was made (saved with the scene)
INPUT_ATTRIBUTE = "SR4ZCT.input"  # the ID of the input node a result was made from


def set_provenance(node, record: dict, input_node=None) -> None:
    """Keep how node was made on it, as a JSON attribute (MRML saves attributes with the scene)."""
    import json

    node.SetAttribute(PROVENANCE_ATTRIBUTE, json.dumps(record, sort_keys=True, allow_nan=False))
    if input_node is not None:
        node.SetAttribute(INPUT_ATTRIBUTE, input_node.GetID())


def provenance(node) -> Optional[dict]:
    """How node was made (set_provenance), or None for a node SR4ZCT did not make (or an unreadable record)."""
    import json

    text = node.GetAttribute(PROVENANCE_ATTRIBUTE) if node is not None else None
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def roi_index_box(roi_node, volume: Volume) -> tuple[tuple[int, int], ...]:
    """The voxels of volume (RAS) whose centres lie in the markups ROI's box: (first, last + 1) per i, j, k."""
    return index_box(roi_node, volume.ijk_to_world, volume.array.shape)


def node_region_shape(roi_node, node) -> tuple:
    """The (k, j, i) shape of the node's voxels inside the ROI (for the cost read-out; no voxel is copied)."""
    image = node.GetImageData()
    box = index_box(roi_node, ijk_to_ras(node), tuple(reversed(image.GetDimensions())))
    return tuple(last - first for first, last in reversed(box))


def index_box(roi_node, ijk_to_world: np.ndarray, shape: tuple) -> tuple[tuple[int, int], ...]:
    """The voxels of a (k, j, i) grid whose centres lie in the markups ROI's box: (first, last + 1) per i, j, k.

    The crop is on the input's own voxel grid (no resampling): the region's bounding box in RAS, mapped to the
    volume's continuous indices, rounded inwards to whole voxels. Both must lie in the same frame (no transform).
    """
    if roi_node.GetTransformNodeID():
        raise InputError(f"the region {roi_node.GetName()} is under a transform; harden it (Data module) first")
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]).T
    indices = (np.linalg.inv(ijk_to_world) @ corners)[:3]
    dimensions = tuple(shape)[::-1]  # (i, j, k)
    box = []
    for axis in range(3):
        first = max(0, int(np.ceil(indices[axis].min() - 1e-6)))
        last = min(dimensions[axis] - 1, int(np.floor(indices[axis].max() + 1e-6)))
        if last - first + 1 < 3:
            raise InputError(f"the region {roi_node.GetName()} holds {max(0, last - first + 1)} voxel(s) of the volume "
                             f"along {'ijk'[axis]}; SR4ZCT needs at least 3: make the region larger or move it onto "
                             "the volume")
        box.append((first, last + 1))
    return tuple(box)


def crop_to_box(volume: Volume, box: tuple[tuple[int, int], ...]) -> Volume:
    """The voxels inside box (roi_index_box) with their own positions: the grid is the input's, only shorter."""
    (i0, i1), (j0, j1), (k0, k1) = box
    matrix = volume.ijk_to_world.copy()
    matrix[:3, 3] = (volume.ijk_to_world @ np.array([i0, j0, k0, 1.0]))[:3]
    return Volume(np.ascontiguousarray(volume.array[k0:k1, j0:j1, i0:i1]), matrix, volume.slice_thickness_mm,
                  volume.source, volume.slice_axis, dict(volume.extra))


# (instance UID) -> the DICOM file Slicer's database holds for it, or None; in Slicer from slicer.dicomDatabase
DicomFileLookup = Callable[[str], Optional[str]]


def slicer_dicom_files() -> Optional[DicomFileLookup]:
    """The instance-to-file lookup of Slicer's DICOM database, or None where there is none or it is closed."""
    database = _open_dicom_database()
    return (lambda uid: database.fileForInstance(uid) or None) if database is not None else None


def export_dicom_series(result_node, input_node, folder, files: Optional[DicomFileLookup]):
    """Write result_node as the derived DICOM series the command line writes (DERIVED\\SECONDARY, references to
    the input's slices, its study and frame of reference), from the input's own DICOM instances; returns the folder.

    The folder is checked before anything is written, and published whole (io/dicom_write.py)."""
    import pydicom

    from ..io.dicom import source_from_headers
    from ..io.dicom_write import check_dicom_output, write_dicom_series
    from ..core.volume import AXIS_NAMES

    uids = (input_node.GetAttribute("DICOM.instanceUIDs") or "").split() if input_node is not None else []
    paths = [files(uid) for uid in uids] if files is not None else []
    if not uids or not all(paths):
        raise InputError(f"{input_node.GetName() if input_node else 'the input'} was not loaded from Slicer's DICOM "
                         "database, so there is no study to put the series in; load the input from DICOM")
    folder = check_dicom_output(folder, [str(p) for p in paths])
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    axis_name = ((provenance(result_node) or {}).get("acquisition") or {}).get("through_plane_axis", "k")
    result = lps_to_ras(volume_from_node(result_node))  # RAS to LPS (its own inverse)
    return write_dicom_series(result, AXIS_NAMES.index(axis_name), folder, source_from_headers(headers),
                              input_node.GetName())
