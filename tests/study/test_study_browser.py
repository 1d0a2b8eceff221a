"""The user study in a real browser: ``python -m vislight.study serve`` on a copy of the tiny run
(with a stand-in gradcam baseline), headless Chromium driven by Selenium through a participant's
whole study, then the recorded answers and the score.

Skips (with the reason) where Selenium, Chromium or chromedriver is missing: install them with
``pip install selenium`` and ``apt-get install chromium chromium-driver``.
``VISLIGHT_SCREENSHOT_DIR=DIR`` saves ``DIR/study_trial.png`` (a trial page, for the docs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SUBPROCESS_ENV
from scipy.stats import binomtest

import vislight
from vislight.study.answers import read_answers
from vislight.study.score import score_run

K = 2  # the tiny run's second summary has 2 members
PARTICIPANT = "tester-01"


def chromium_driver():
    """A headless Chromium WebDriver, or a skip naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "no headless browser: chromium and chromedriver are needed on PATH "
            "(apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,900"):  # fmt: skip
        options.add_argument(arg)
    try:
        return webdriver.Chrome(options=options, service=Service(driver))
    except Exception as e:  # noqa: BLE001 - a browser that cannot start here is a skip
        pytest.skip(f"headless Chromium does not start here: {str(e).splitlines()[0]}")


@pytest.fixture
def browser():
    """A headless Chromium WebDriver (a skip, before any server starts, where none is here)."""
    driver = chromium_driver()
    yield driver
    driver.quit()


@pytest.fixture
def served(tiny_reference, tmp_path):
    """``(url, run folder, server process)``: the study of a copy of the tiny run, served by
    ``python -m vislight.study serve`` on a free port."""
    run = tmp_path / "run"
    shutil.copytree(tiny_reference, run, ignore=shutil.ignore_patterns("report", "wandb"))
    baselines = run / "summaries" / "baselines"
    baselines.mkdir(parents=True, exist_ok=True)
    if not (baselines / "gradcam.json").exists():  # a stand-in: the run's own summaries
        shutil.copy(run / "summaries.json", baselines / "gradcam.json")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vislight.study",
                "serve",
                str(run),
                f"study.members={K}",
                "study.port=0",
            ],  # fmt: skip
            cwd=vislight.PROJECT_ROOT,
            env=SUBPROCESS_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    url = None
    while url is None:
        found = re.search(r"serving at (http://\S+/)", log.read_text())
        url = found and found.group(1)
        if url is None and (proc.poll() is not None or time.monotonic() > deadline):
            proc.kill()
            pytest.fail(f"the study server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    yield url, run, proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_participant_completes_the_study_in_chromium(browser, served):
    url, run, proc, log = served
    driver = browser
    trials = {t["id"]: t for t in json.loads((run / "study/trials.json").read_text())["trials"]}
    assert {t["method"] for t in trials.values()} == {"vislight", "gradcam"}
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown_trial(d) -> str | None:
        """The trial id of the page shown, "done" on the end page, None while a page loads."""
        if "/done" in d.current_url:
            return "done"
        return d.find_element(By.NAME, "trial").get_attribute("value")

    def wait_past(previous: str | None) -> None:
        """Wait until the browser shows another page than ``previous``'s: element lookups fail
        in several ways while a page is replaced, so any driver error means "not yet"."""
        WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(
            lambda d: (t := shown_trial(d)) is not None and t != previous
        )

    made = {}  # trial id -> (choice, name)
    driver.get(url)
    driver.find_element(By.ID, "participant").send_keys(PARTICIPANT)
    driver.find_element(By.ID, "start").click()
    wait_past(None)
    for i in range(len(trials) + 1):
        if "/done" in driver.current_url:
            break
        tid = driver.find_element(By.NAME, "trial").get_attribute("value")
        page = driver.page_source.lower()
        assert "vislight" not in page and "gradcam" not in page  # methods blind
        loaded = driver.execute_script(
            "return [...document.images].map(i => i.complete && i.naturalWidth)"
        )
        assert loaded == [224] * (K + 1)  # every crop displays (the CSP lets them in)
        if i == 0 and os.environ.get("VISLIGHT_SCREENSHOT_DIR"):
            folder = Path(os.environ["VISLIGHT_SCREENSHOT_DIR"])
            folder.mkdir(parents=True, exist_ok=True)
            driver.find_element(By.ID, f"choice-{trials[tid]['intruder']}").click()
            driver.save_screenshot(str(folder / "study_trial.png"))
        # the intruder on even trials, a wrong picture on odd ones
        choice = (trials[tid]["intruder"] + i % 2) % (K + 1)
        driver.find_element(By.ID, f"choice-{choice}").click()
        name = driver.find_element(By.ID, "name")
        name.clear()
        name.send_keys(f"Part{i % 2}")
        driver.find_element(By.ID, "next").click()
        wait_past(tid)  # the next page has loaded
        made[tid] = (choice, f"Part{i % 2}")
    assert "/done" in driver.current_url
    assert driver.find_element(By.ID, "done").text == "Thank you!"
    assert f"answered {len(trials)} of {len(trials)}" in driver.page_source
    driver.get(url + f"trial?participant={PARTICIPANT}")  # coming back: nothing left
    assert "/done" in driver.current_url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()
    assert "stopped" in log.read_text()

    answers, unreadable = read_answers(run / "study/answers.jsonl")
    assert unreadable == 0 and len(answers) == len(trials) == len(made)
    assert {a["correct"] for a in answers} == {True, False}
    for order, a in enumerate(answers, 1):
        trial = trials[a["trial"]]
        choice, name = made[a["trial"]]
        assert a == {**a, "participant": PARTICIPANT, "method": trial["method"],
                     "class": trial["class"], "summary": trial["summary"], "choice": choice,
                     "intruder": trial["intruder"], "correct": choice == trial["intruder"],
                     "options": K + 1, "name": name, "order": order}  # fmt: skip
    result = score_run(run, [f"study.members={K}"], announce=lambda s: None)
    assert result["answers"] == len(trials) and result["participants"] == 1
    for method, row in result["methods"].items():
        mine = [a for a in answers if a["method"] == method]
        correct = sum(a["correct"] for a in mine)
        ci = binomtest(correct, len(mine)).proportion_ci(0.95, method="exact")
        assert (row["answers"], row["correct"]) == (len(mine), correct)
        assert row["ci"] == pytest.approx([ci.low, ci.high])
        assert row["chance"] == pytest.approx(1 / (K + 1))
    tags = {(t["method"], t["class"], t["summary"]): t["tag"] for t in trials.values()}
    assert len(result["summaries"]) == len(tags)
    for s in result["summaries"]:
        assert s["tag"] == tags[(s["method"], s["class"], s["summary"])]
        assert s["names"] == [[made[a["trial"]][1].lower(), 1] for a in answers
                              if (a["method"], a["class"], a["summary"]) == (s["method"], s["class"], s["summary"])]  # fmt: skip
