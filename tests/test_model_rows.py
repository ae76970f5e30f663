"""Reliability table, model.py: model files validated (bytes, types, bounds); a reused model reports no validation of
this scan (row 25; issue 17 rows 7, 17).

Each case checks the exit code, one `error:` line without a traceback, that nothing was published
and that the input's bytes are unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from reliability import FAST, assert_refused, ct, run_cli, small_model  # noqa: F401 (fixtures among them)


# ---- row 25: model files validated; a reused model reports no validation of this scan --------------------------------
MODEL_DAMAGE = [
    ("missing-key", {"grid_spacing_mm": KeyError}),
    ("extra-key", {"surprise": 1}),
    ("unknown-architecture", {"architecture": "transformer"}),
    ("huge-depth", {"network_options.depth": 100000}),
    ("huge-width", {"network_options.width": 4096}),
    ("scale-zero", {"normalisation.scale": 0.0}),
    ("offset-nan", {"normalisation.offset": float("nan")}),
    ("weight-nan", {"state_dict.body.0.bias": torch.full((4,), float("nan"))}),
    ("weight-shape", {"state_dict.body.0.bias": torch.zeros(7)}),
    ("thickness-absurd", {"acquisition.thickness_mm": 1e308}),
]


@pytest.mark.parametrize("changes", [c for _, c in MODEL_DAMAGE], ids=[n for n, _ in MODEL_DAMAGE])
def test_bad_model_files_are_refused(tmp_path, ct, capsys, changes):
    model = small_model(tmp_path / "m.pt", **changes)
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, *FAST], capsys)
    assert_refused(code, err, "not a valid SR4ZCT model")
    assert not (tmp_path / "o.nrrd").exists()


def test_reused_model_does_not_claim_this_scans_validation(tmp_path, ct, capsys):
    model = small_model(tmp_path / "m.pt")
    code, out, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, "--report", tmp_path / "r",
                              "--progress", "none", *FAST], capsys)
    assert code == 0, err
    assert "validation PSNR" not in out and "no validation on this scan" in out
    training = json.loads((tmp_path / "r" / "metrics.json").read_text())["training"]
    assert "validation_psnr_db" not in training and training["training_scan"]["validation_psnr_db"] == 41.0


# ---- issue 17 row 7: a model file with damaged bytes (a record failing its CRC-32) is refused -------------------------
def _flip_a_weight_byte(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    data = bytearray(path.read_bytes())
    local_extra = int.from_bytes(data[record.header_offset + 28:record.header_offset + 30], "little")
    start = record.header_offset + 30 + len(record.filename.encode()) + local_extra
    data[start + 2] ^= 0x40  # one bit of one weight: torch's own reader loads it as a wrong weight
    path.write_bytes(bytes(data))
    return path


def test_a_model_with_damaged_bytes_is_refused(tmp_path, ct, capsys):
    model = _flip_a_weight_byte(small_model(tmp_path / "m.pt"))
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, *FAST], capsys)
    assert_refused(code, err, r"m\.pt is damaged: its record .*data/.* fails its CRC-32 check")
    assert not (tmp_path / "o.nrrd").exists()


# ---- issue 17 row 17: fields of the wrong type are "not a valid SR4ZCT model", never a TypeError ---------------------
WRONG_TYPES = [
    ("thickness-string", {"acquisition.thickness_mm": "2.5"}),
    ("increment-list", {"acquisition.increment_mm": [2.5]}),
    ("profile-number", {"acquisition.profile": 3}),
    ("grid-string", {"grid_spacing_mm": "0.7"}),
    ("psnr-string", {"metrics.validation_psnr_db": "41"}),
    ("acquisition-list", {"acquisition": [2.5, 2.5, "box"]}),
]


@pytest.mark.parametrize("changes", [c for _, c in WRONG_TYPES], ids=[n for n, _ in WRONG_TYPES])
def test_model_fields_of_the_wrong_type_are_refused(tmp_path, ct, capsys, changes):
    model = small_model(tmp_path / "m.pt", **changes)
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, "--progress", "none", *FAST],
                           capsys)
    assert_refused(code, err, "not a valid SR4ZCT model")
    assert not (tmp_path / "o.nrrd").exists()


def test_a_model_of_the_old_box_default_names_the_profile_that_applies_it(tmp_path, ct, capsys):
    """A model saved before the default became blurred-box: refused by default with the fix in words, applied with
    --profile box."""
    model = small_model(tmp_path / "m.pt", **{"acquisition.profile": "box", "acquisition.fwtm_mm": None})
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, *FAST], capsys)
    assert_refused(code, err, "give --profile box to apply this model")
    assert "default is blurred-box" in err and not (tmp_path / "o.nrrd").exists()
    code, _, err = run_cli(["enhance", ct, "-o", tmp_path / "o.nrrd", "--model", model, "--profile", "box",
                            "--progress", "none", *FAST], capsys)
    assert code == 0, err
