"""The dashboard as a user sees it: `n2d serve` receives a series from dcmtk's storescu, and
headless Chromium loads `/` once the run is done. Loopback only; stops by itself."""

import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from scp_server.run_summary import preview_key
from tests.integration.conftest import send_series, start_node, stop_node, wait_until, write_config
from tests.n2d_dicom.conftest import write_ct_series

#: The browser window the page is drawn in.
WINDOW = (1400, 900)


def fetch(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def screenshot(url: str, path: Path, profile: Path) -> np.ndarray:
    """``url`` drawn by headless Chromium into ``path``; returns its pixels, grey."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium not found: apt-get install chromium"
    drawn = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={path}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert path.is_file(), drawn.stderr[-2000:]
    return np.asarray(Image.open(path).convert("L"))


@pytest.mark.slow
def test_the_dashboard_shows_a_finished_run_with_its_thumbnails_in_a_real_browser(tmp_path, pacs):
    pacs_port, received = pacs
    path, config = write_config(tmp_path, pacs_port, nlm_blend=0.0, wiener=False)
    folder = tmp_path / "modality"
    folder.mkdir()
    sources = [pydicom.dcmread(p) for p in write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])]
    series = str(sources[0].SeriesInstanceUID)
    url = f"http://127.0.0.1:{config['http_port']}/"
    process = start_node(path, config["port"])
    try:
        send_series(config["port"], folder)
        wait_until(lambda: len(received) == 4, process)
        wait_until(lambda: f"/runs/{preview_key(series)}/residual.png" in fetch(url), process)
        wait_until(lambda: '"state done"' in fetch(url), process)
        page = fetch(url)
        pixels = screenshot(url, tmp_path / "dashboard.png", tmp_path / "chromium")
    finally:
        stop_node(process)

    assert series[-12:] in page and "ct" in page and "CT, 4 slices, 128&times;128" in page
    assert "HU" in page and "Anscombe" in page
    assert str(sources[0].PatientName) not in page and str(sources[0].PatientID) not in page
    assert pixels.shape == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 20  # not blank: text, tables and the thumbnails drawn
    assert (pixels < 16).sum() > 1000  # the thumbnails' air, drawn black: the page's own colours are lighter
