"""The playground in a real browser: Playwright drives Debian's Chromium against a real `pspnet playground`.

Screenshots of each page are saved in the test's temporary folder (and, with PSPNET_SCREENSHOTS=DIR, there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from test_playground import free_port, start_playground
from test_serve import CHROMIUM_FLAGS, chromium_path, scene

from pspnet.data.synthetic import ContextScenes

FORM = {  # a tiny synthetic run, typed into the form
    "#f-model\\.encoder": "lite",
    "#f-data\\.augment\\.crop_size": "48, 48",
    "#f-train\\.batch_size": "2",
    "#f-train\\.base_lr": "0.02",
    "#f-data\\.synthetic\\.image_size": "48, 48",
    "#f-data\\.synthetic\\.num_train": "16",
    "#f-data\\.synthetic\\.num_val": "4",
    "#f-data\\.num_workers": "0",
    "#f-train\\.log_interval": "1",
    "#f-train\\.checkpoint_interval": "5",
}


def fill_form(page, name: str, iterations: int, dropout: float) -> None:
    page.click("nav button[data-tab=new]")
    page.wait_for_function("document.querySelector('#yaml').textContent.length > 0", timeout=90_000)
    page.evaluate("document.getElementById('more').open = true")
    page.fill("#run-name", name)
    page.select_option("#f-model\\.encoder", "lite")
    for selector, value in FORM.items():
        if selector != "#f-model\\.encoder":
            page.fill(selector, value)
    page.fill("#f-train\\.max_iters", str(iterations))
    page.fill("#f-train\\.eval_interval", str(iterations))
    page.eval_on_selector(
        "#f-model\\.dropout", f"(el) => {{ el.value = {dropout}; el.dispatchEvent(new Event('change')); }}"
    )
    page.dispatch_event("#f-train\\.max_iters", "change")
    page.wait_for_function(f"document.querySelector('#yaml').textContent.includes('dropout: {dropout}')")
    page.wait_for_function("document.querySelector('#yaml').textContent.includes('encoder: lite')")


def run_the_scenario(page, shots: Path, tmp_path: Path, image: Path) -> None:
    """Train, stop and resume, compare, export and try, with a screenshot of each page."""
    # 1. a tiny run from the form, followed live to its end
    fill_form(page, "first", 12, 0.1)
    assert "pspnet train" in page.inner_text("#command")
    assert "parameters" in page.inner_text("#estimate")
    page.screenshot(path=str(shots / "form.png"), full_page=True)
    page.click("#start")
    page.wait_for_selector("#run-state.finished", timeout=120_000)
    miou = float(page.inner_text("#run-miou"))
    assert 0 <= miou <= 100
    page.wait_for_selector("#report iframe")
    page.screenshot(path=str(shots / "run.png"), full_page=True)
    first_id = page.evaluate("state.current.id")
    # 2. another dropout, stopped half way and resumed to a shorter schedule
    fill_form(page, "second", 400, 0.3)
    page.click("#start")
    page.wait_for_function("state.current?.name === 'second' && state.current.iteration >= 5", timeout=120_000)
    page.click("#run-stop")
    page.wait_for_selector("#run-state.interrupted", timeout=60_000)
    stopped = page.evaluate("state.current.iteration")
    assert stopped < 400
    page.fill("#run-extend", str(stopped + 4))
    page.click("#run-resume")
    page.wait_for_selector("#run-state.finished", timeout=120_000)
    assert page.evaluate("state.current.iteration") == stopped + 4
    # 3. the two runs side by side
    page.click("nav button[data-tab=runs]")
    page.wait_for_selector("[data-select]")
    for box in page.query_selector_all("[data-select]"):
        box.check()
    page.click("#compare-selected")
    page.wait_for_selector("#compare-changed")
    changed = page.inner_text("#compare-changed")
    assert "model.dropout" in changed and "train.max_iters" in changed
    assert "mIoU" in page.inner_text("#compare-metrics")
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    # 4. export the first run to ONNX and download it
    page.click("nav button[data-tab=runs]")
    page.click(f"[data-open={first_id}]")
    page.wait_for_selector("#run-state.finished")
    page.click("#export-start")
    link = page.wait_for_selector("#exports a", timeout=180_000)
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "model.onnx"
    download.value.save_as(saved)
    assert saved.stat().st_size > 1000 and saved.read_bytes()[:1] == b"\x08"
    # 5. try the model: the serve page of this run, inside the run's page
    frame = page.wait_for_selector("#try iframe").content_frame()
    frame.wait_for_selector("#legend li")
    assert frame.locator("#legend li").all_inner_texts() == list(ContextScenes.classes.names)
    frame.set_input_files("#file", str(image))
    frame.wait_for_selector("#overlay[data-ready]", timeout=60_000)
    page.locator("#try").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "try.png"), full_page=True)


def test_train_stop_resume_compare_export_and_try_in_chromium(tmp_path):
    browser_path = chromium_path()
    from playwright.sync_api import sync_playwright  # heavy and optional: only for this test

    shots = tmp_path / "screenshots"
    shots.mkdir()
    image = tmp_path / "harbour.png"
    scene(3, (64, 80)).save(image)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_playground(tmp_path / "workspace", tmp_path, port)
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
            page.goto(f"{url}/")
            try:
                run_the_scenario(page, shots, tmp_path, image)
            except Exception:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)
                raise
            browser.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert outside == []  # the page loads nothing from elsewhere
    if os.environ.get("PSPNET_SCREENSHOTS"):
        shutil.copytree(shots, Path(os.environ["PSPNET_SCREENSHOTS"]), dirs_exist_ok=True)
