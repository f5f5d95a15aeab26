"""The page of ``python -m ampt.app`` in a real headless browser (Chromium driven by Selenium).

An AMPT run of one short epoch on the toy colours is exported; the page is
served on 127.0.0.1; the browser drops an image, reads the prediction,
presses "Attack" and reads the adversarial image, the magnified
perturbation, the new prediction and the router weights before and after.
Skipped, with the reason, where gradio, selenium, Chromium or chromedriver
is missing (``.ci/run`` installs Debian's chromium and chromium-driver when
it can). ``AMPT_UPDATE_SCREENSHOT=1`` writes the screenshot to
``docs/img/app.png`` (the README's); otherwise it goes to the test's folder.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> str:
    for module, extra in (("gradio", "app"), ("selenium", "test")):  # looked up, not imported: gradio takes 3 s
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed (pip install -e ".[{extra}]")'
    if CHROMIUM is None or CHROMEDRIVER is None:
        return ("no headless browser: Chromium and chromedriver are not installed "
                "(apt-get install chromium chromium-driver)")
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok")


@pytest.fixture(scope="module")
def artifact(demo_shape_env, tmp_path_factory):
    import train
    from ampt.config_paths import find_config
    from ampt.export import export_run

    root, backbone = demo_shape_env
    base = tmp_path_factory.mktemp("app")
    argv = ["--root", str(root), "--seed", "1", "--trainer", "AMPT", "--config-file",
            str(find_config("trainers", "AMPT", "digits")), "--output-dir", str(base / "run"), "DATASET.NAME", "AptToy",
            "MODEL.BACKBONE.NAME", str(backbone), "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "ADV.TRAIN.STEPS", "1", "ADV.TEST.ATTACK", ""]
    assert train.main(argv) == 0
    return export_run(base / "run", base / "exported"), root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_predicts_attacks_and_shows_router_weights(artifact, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from ampt.app import build_app
    from ampt.deploy import load_classifier

    folder, root = artifact
    page = build_app(load_classifier(folder))
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        upload.send_keys(str(next((root / "apt_toy" / "test" / "2").glob("*.png"))))
        wait.until(lambda b: "%" in b.find_element(By.ID, "clean").text)  # the prediction's probabilities
        assert "prompt 1" in browser.find_element(By.ID, "clean-router").text
        browser.find_element(By.ID, "attack-button").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#perturbation img")
                   and "prompt 1" in b.find_element(By.ID, "attacked-router").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#adversarial img")
        assert any(name in browser.find_element(By.ID, "attacked").text for name in ("red", "green", "blue", "white"))
        target = REPO / "docs" / "img" / "app.png" if os.environ.get("AMPT_UPDATE_SCREENSHOT") else tmp_path / "app.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(target)) and target.stat().st_size > 10_000
    finally:
        browser.quit()
        page.close()
