"""Reliability table, mrml/job.py: the Slicer worker path refuses with the CLI's messages (rows 19, 25, 27).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import sys

import pytest

from reliability import InputError, MATRIX, SR4ZCTLib, small_model  # noqa: F401 (fixtures among them)


# ---- the Slicer worker path: rows 19, 25, 27 ----------------------------------------------------------------------------
@pytest.fixture
def node(small_ct):
    slicer = pytest.importorskip("slicer")
    import slicer.util

    from SR4ZCTLib.mrml.nodes import set_ijk_to_ras

    slicer.mrmlScene = slicer.vtkMRMLScene()
    volume_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(volume_node, small_ct)
    set_ijk_to_ras(volume_node, MATRIX)
    yield volume_node
    slicer.mrmlScene.Clear(1)


def _job_existing_model(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"keep")
    return {"save_model_path": str(tmp_path / "m.pt")}, "exists"


def _job_bad_model(tmp_path):
    return {"model_path": str(small_model(tmp_path / "bad.pt", **{"normalisation.scale": 0.0}))}, "not a valid SR4ZCT model"


def _job_absurd_target(tmp_path):
    return {"target_spacing_mm": 100.0}, "--target-spacing"


def _job_absurd_thickness(tmp_path):
    return {"thickness_mm": 1e308}, "thickness.*outside"


JOB_CASES = [_job_existing_model, _job_bad_model, _job_absurd_target, _job_absurd_thickness]


@pytest.mark.parametrize("case", JOB_CASES, ids=[c.__name__ for c in JOB_CASES])
def test_worker_path_refuses_with_the_same_message(tmp_path, node, case):
    from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest

    options, message = case(tmp_path)
    scene = node.GetScene()
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match=message):
        job = EnhanceJob(node, EnhanceRequest(iterations=2, device="cpu", **options), sys.executable)
        job.start().wait(timeout=120)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if (tmp_path / "m.pt").exists():
        assert (tmp_path / "m.pt").read_bytes() == b"keep"
