"""The web page in a real browser: headless Chromium (Debian's package, which `make test`
installs) loads the page from a live `crossfuse serve`, runs a prediction and a search through the
UI, and finds the label and hits the API gives. Screenshots go to $CROSSFUSE_SCREENSHOTS if set
(docs/serving.md shows them)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import start_serve

CHROMIUM = os.environ.get("CROSSFUSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# as root Chromium needs --no-sandbox; the rest keep it from calling out of this offline machine
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"]


def _serve(*args):
    proc, port, _ = start_serve(*args)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(served):
    proc, url = _serve(served["fusion"], "--index", f"pics={served['indexes']['pics']}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _browser(p, *extra):
    assert Path(CHROMIUM).is_file(), (f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package "
                                      "(apt-get install chromium), or set CROSSFUSE_CHROMIUM to a Chromium binary")
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + list(extra))


@pytest.mark.slow
def test_predict_and_search_through_the_page(server, served, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("CROSSFUSE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(served["items"])
    image = served["items"].parent / df["image"][1]
    caption = df["caption"][1]
    with open(image, "rb") as f:
        api = httpx.post(f"{server}/v1/predict", files={"image": ("x.png", f.read())}, data={"caption": caption})
    expected = api.json()["predictions"][0]["label"]
    top = httpx.post(f"{server}/v1/search", json={"index": "pics", "query": "red above blue", "top": 8}).json()

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#field-caption")
        assert "attention" in page.inner_text("#model-line")
        page.set_input_files("#field-image", str(image))
        page.fill("#field-caption", caption)  # the numbers are left out: tabular is absent
        page.click("#predict-button")
        page.wait_for_selector("#predicted-label")
        assert page.inner_text("#predicted-label") == expected
        assert "left out: tabular" in page.inner_text("#predict-result")
        assert page.locator("#predict-result .bars").count() >= 2  # probabilities and modality weights
        page.screenshot(path=str(shots / "serve_predict.png"), full_page=True)

        page.click("#tab-search")
        page.fill("#search-query", "red above blue")
        page.fill("#search-top", "8")
        page.click("#search-button")
        page.wait_for_selector("#hits .hit")
        cards = page.locator("#hits .hit")
        assert cards.count() == 8
        assert cards.nth(0).locator(".value").inner_text() == top["results"][0]["value"]
        page.wait_for_function("() => [...document.querySelectorAll('#hits img')].every(i => i.naturalWidth > 0)")
        page.screenshot(path=str(shots / "serve_search.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert (shots / "serve_predict.png").stat().st_size > 5000


@pytest.mark.slow
def test_audio_recorded_in_the_page_is_sent_as_wav(tmp_path):
    """Chromium's fake microphone (a beep) recorded with the page's Record button: the page turns
    the browser's recording into WAV, which the server reads; the other modalities are left out."""
    import yaml
    from playwright.sync_api import sync_playwright

    from conftest import make_items, tiny_config
    from crossfuse.cli.main import main

    cfg = tiny_config(make_items(tmp_path / "data", n=24, audio=True), tmp_path / "run", epochs=1)
    cfg["modalities"]["sound"] = {"kind": "audio", "columns": ["sound"], "encoder": {"name": "audio_cnn"},
                                  "processor": {"sample_rate": 8000, "duration": 0.5}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "a.yaml")]) == 0
    proc, url = _serve(tmp_path / "run" / "model")
    try:
        with sync_playwright() as p:
            browser = _browser(p, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
            page = browser.new_page()
            page.goto(url + "/")
            page.click("#record-sound")
            page.wait_for_function("() => document.getElementById('record-sound').textContent === 'Stop'")
            time.sleep(1.0)
            page.click("#record-sound")
            page.wait_for_function("() => document.getElementById('recorded-sound').textContent.startsWith('recorded')")
            page.click("#predict-button")
            page.wait_for_selector("#predicted-label")
            assert page.inner_text("#predicted-label") in ("cat", "dog", "fish")
            assert "left out: image, tabular, text" in page.inner_text("#predict-result")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
