"""The Swagger UI page at /docs in headless Chromium (Debian's chromium + chromium-driver, via Selenium).

It loads, lists the API's routes, and a "Try it out" embeddings call with the dev key returns 200.
``CIRRUS_DOCS_SCREENSHOT=path`` keeps a screenshot of the page after the call (docs/images/swagger-ui.png).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them where apt-get runs as root)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_swagger_ui_lists_the_routes_and_try_it_out_embeddings_returns_200(local_cirrus, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(local_cirrus.url + "/docs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock-summary-path")))
    paths = {e.get_attribute("data-path") or e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/embeddings", "/v1/chat/completions", "/v1/models", "/v1/batches", "/v1/files"} <= paths, paths

    # Authorize with the dev key (the bearer scheme of openapi.json).
    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper .authorize").click()
    field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input")))
    field.send_keys(local_cirrus.key)
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .btn-done").click()

    op = browser.find_element(By.ID, "operations-light-post_v1_embeddings")
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    body = wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"))[0]
    body.clear()
    body.send_keys(json.dumps({"model": "all-minilm-l6-v2", "input": "where is my parcel?",
                               "encoding_format": "float"}))
    op.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"))
    assert status[0].text.strip().startswith("200"), status[0].text
    answer = op.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre").text
    assert '"embedding"' in answer and '"object": "list"' in answer

    shot = Path(os.environ.get("CIRRUS_DOCS_SCREENSHOT") or tmp_path / "swagger-ui.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
