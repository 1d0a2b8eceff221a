"""The README's screenshots (docs/): an application's class page and a user-study trial.

    python experiments/docs_screenshots.py [RUN_DIR]     # ~3 min on 2 CPU cores

RUN_DIR defaults to the CUB evaluation run of ``cub_parts_study.py eval``
(``outputs/studies/cub_parts/cub_eval``; run that first). Applies its summaries to four test photos
of each of four of its classes (``apply.name=docs``), serves its user study on a free port, and
photographs both pages with headless Chromium (Selenium + the system's chromium/chromedriver).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs import ROOT

from vislight.apply import apply_run
from vislight.masks.cache import safe_name

DOCS = ROOT / "docs"
RUN = ROOT / "outputs" / "studies" / "cub_parts" / "cub_eval"


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else RUN
    DOCS.mkdir(exist_ok=True)
    result = apply_run(run, ["apply.name=docs", "apply.max_images_per_class=4",
                             "data.classes=[21,23,29,36]"])  # fmt: skip
    found = max(result["classes"], key=lambda c: sum(result["classes"][c]["found_share"].values()))
    browser = driver()
    try:
        page = run / "apply" / "docs" / f"{safe_name(found)}.html"
        browser.get(page.as_uri())
        time.sleep(0.5)
        browser.save_screenshot(str(DOCS / "apply_class.png"))
        server = subprocess.Popen(
            [sys.executable, "-m", "vislight.study", "serve", str(run), "study.port=0",
             "study.answers=docs.jsonl"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            url = None
            for line in server.stdout:
                if m := re.search(r"(http://127\.0\.0\.1:\d+/)", line):
                    url = m.group(1)
                    break
            browser.get(url)
            browser.find_element("name", "participant").send_keys("docs")
            browser.find_element("css selector", "form").submit()
            time.sleep(1.0)
            browser.save_screenshot(str(DOCS / "study_trial.png"))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    finally:
        browser.quit()
    print(f"wrote {DOCS / 'apply_class.png'} ({found}) and {DOCS / 'study_trial.png'}")


if __name__ == "__main__":
    main()
