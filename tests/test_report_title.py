"""report.png's title fits the figure: the blurred-box default made the one-line title run off both edges."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from SR4ZCTLib import Acquisition  # noqa: E402
from SR4ZCTLib.report import report_title  # noqa: E402


def test_the_title_of_a_blurred_box_run_fits_the_three_column_figure():
    geometry = SimpleNamespace(acquisition=Acquisition(6.25, 3.125, "blurred-box", 10.625))
    metrics = SimpleNamespace(validation_psnr_db=29.7345, validation_linear_psnr_db=27.9012)
    title = report_title(geometry, 0.842, metrics)
    assert "blurred-box profile (FWTM 10.6 mm)" in title and "stand-in PSNR 29.73 dB vs linear 27.90 dB" in title
    figure = plt.figure(figsize=(13, 8.5))  # the report's three columns (report._stage_picture)
    try:
        text = figure.suptitle(title, fontsize=11)
        figure.canvas.draw()
        extent = text.get_window_extent(figure.canvas.get_renderer())
        assert extent.x0 >= 0 and extent.x1 <= figure.bbox.width, (extent, figure.bbox.width)
    finally:
        plt.close(figure)
