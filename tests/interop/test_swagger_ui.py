"""Swagger UI at /docs/ in a real headless Chromium (Selenium).

The UI must render every operation of /api/v1/openapi.json, "Try it out" on
POST /api/v1/auth/token must get a live 200 with an access token, and the page
must load nothing from anywhere but the server itself (the UI is served from
the binary; the machine it runs on may have no network).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import Server, record_artifact

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
WAIT_S = 30
TOKEN_OP = "#operations-auth-token"  # Swagger UI's id: operations-<tag>-<operationId>


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} missing: tests/interop/run installs chromium and chromium-driver", pytrace=False)
    # Selenium Manager must not try to download anything, even if asked.
    os.environ["SE_OFFLINE"] = "true"

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})

    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "devtools"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == "127.0.0.1"


def network_urls(drv) -> list[str]:
    """Every URL the page asked the network for, from Chrome's performance log."""
    urls = []
    for entry in drv.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def spec_operations(server: Server) -> set[tuple[str, str]]:
    spec = requests.get(server.url("/api/v1/openapi.json"), timeout=10).json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(m.upper(), path) for path, item in spec["paths"].items() for m in item if m in methods}


def test_swagger_ui_renders_and_try_it_out_gets_a_token(server: Server, driver, tmp_path_factory):
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(server.url("/docs/"))

    # --- it renders the whole API -------------------------------------------
    op = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, TOKEN_OP)))
    assert driver.title == "Swagger UI", driver.title
    title = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".information-container .title")))
    assert title.text.startswith("Callhome API"), title.text
    assert not driver.find_elements(By.CSS_SELECTOR, ".errors-wrapper"), (
        "Swagger UI shows errors: "
        + " | ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".errors-wrapper"))
    )

    shown = set()
    for block in driver.find_elements(By.CSS_SELECTOR, ".opblock"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip()
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
        shown.add((method, path))
    expected = spec_operations(server)
    assert ("POST", "/api/v1/auth/token") in shown
    assert shown == expected, f"missing in UI: {expected - shown}; extra: {shown - expected}"

    shots = tmp_path_factory.mktemp("screenshots")
    overview = shots / "swagger-ui.png"
    assert driver.save_screenshot(str(overview))
    record_artifact("Swagger UI screenshot", overview)
    print(f"\nSwagger UI screenshot: {overview}")

    # --- Try it out on POST /api/v1/auth/token -------------------------------
    summary = op.find_element(By.CSS_SELECTOR, ".opblock-summary")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", summary)
    summary.find_element(By.CSS_SELECTOR, ".opblock-summary-path").click()
    try_out = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{TOKEN_OP} .try-out__btn")))
    try_out.click()

    textarea = wait.until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, f"{TOKEN_OP} textarea.body-param__text"))
    )
    body = json.dumps({"username": "admin", "password": server.admin_password})
    textarea.send_keys(Keys.CONTROL, "a")
    textarea.send_keys(Keys.DELETE)
    textarea.send_keys(body)
    wait.until(lambda d: json.loads(textarea.get_attribute("value") or "null") == json.loads(body))

    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{TOKEN_OP} button.execute"))).click()

    status_cell = wait.until(
        EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f"{TOKEN_OP} .live-responses-table .response .response-col_status")
        )
    )
    response_body = wait.until(
        EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f"{TOKEN_OP} .live-responses-table .response-col_description pre")
        )
    )
    request_url = driver.find_element(By.CSS_SELECTOR, f"{TOKEN_OP} .request-url pre").text.strip()

    after = shots / "swagger-ui-try-it-out.png"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", status_cell)
    assert driver.save_screenshot(str(after))
    record_artifact("Swagger UI try-it-out screenshot", after)
    print(f"Swagger UI try-it-out screenshot: {after}")

    assert status_cell.text.strip() == "200", f"status {status_cell.text!r}, body {response_body.text!r}"
    assert request_url == server.url("/api/v1/auth/token"), request_url
    token = json.loads(response_body.text)
    assert token.get("token_type") == "Bearer", token
    assert token.get("access_token"), token
    # The token the UI got is a working one.
    who = requests.get(
        server.url("/api/v1/auth/whoami"),
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=10,
    )
    assert who.status_code == 200, who.text

    # --- nothing came from outside 127.0.0.1 --------------------------------
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources, "no resource timing entries: the page loaded nothing?"
    assert any(u.endswith("/api/v1/openapi.json") for u in resources), resources
    assert any(u.endswith("/api/v1/auth/token") for u in resources), resources
    outside = [u for u in [driver.current_url, *resources] if not is_local(u)]
    assert not outside, f"fetched from outside 127.0.0.1: {outside}"

    try:
        requested = network_urls(driver)
    except WebDriverException:  # performance log not available in this driver
        requested = []
    if requested:
        assert any(u.endswith("/api/v1/openapi.json") for u in requested), requested
    outside = [u for u in requested if not is_local(u)]
    assert not outside, f"requested from outside 127.0.0.1: {outside}"

    try:
        console = driver.get_log("browser")
    except WebDriverException:
        console = []
    severe = [e for e in console if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"
