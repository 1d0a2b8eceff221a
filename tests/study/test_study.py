"""The user-study kit without a browser: trials (deterministic, intruders from another summary of
the same class, nothing of the answer in the page), the web app over HTTP (participant ids, answers,
resuming, refused paths), concurrent answers, the score and the command line."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from scipy.stats import binomtest

from vislight.errors import ConfigError
from vislight.report.html import typical_first
from vislight.study.__main__ import main
from vislight.study.answers import read_answers
from vislight.study.score import format_score, score, score_run
from vislight.study.server import Study, make_server, serve
from vislight.study.settings import StudySettings
from vislight.study.trials import build_trials, fingerprint, prepare, write_crops
from vislight.summaries.rle import rle_encode

SIDE = 32


def member(index: int, sim: float, box=(4, 4, 20, 20)) -> dict:
    """A member on image ``index`` whose region is ``box`` (x0, y0, x1, y1)."""
    mask = np.zeros((SIDE, SIDE), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return {"key": f"img-{index:03d}", "index": index, "bbox": list(box),
            "mask_rle": rle_encode(mask), "similarity": sim, "drop": 0.5}  # fmt: skip


def summary(indices, tag: str | None = None, faithful: bool = True) -> dict:
    members = [member(i, 1.0 - 0.1 * j) for j, i in enumerate(indices)]
    out = {"exemplar": members[0]["key"], "support": len(members), "coherence": 0.5,
           "members": members, "faithfulness": {"faithful": faithful}}  # fmt: skip
    if tag:
        out["tag"] = tag
    return out


# "cat": three eligible summaries (numbered 1-3 by support), one not relied on, one too small;
# "dog": a single eligible summary (no trial); "bird": summary 2's images are all in summary 1.
SUMMARIES = {
    "classes": {
        "cat": [
            summary([0, 1, 2, 3, 4], "ear"),
            summary([5, 6, 7, 8], "eye"),
            summary([0, 1, 9, 10], "nose"),
            summary([11, 12, 13, 14, 15, 16], "tail", faithful=False),
            summary([17, 18], "paw"),
        ],
        "dog": [summary([20, 21, 22, 23], "ear")],
        "bird": [summary([30, 31, 32, 33, 34], "beak"), summary([33, 34, 30], "wing")],
    }
}
BASELINE = {"classes": {"cat": [summary([40, 41, 42]), summary([43, 44, 45])]}}
K = 3
SETTINGS = StudySettings(members=K, baselines=("gradcam",), seed=0)


def fake_image(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def methods() -> dict:
    return {"vislight": SUMMARIES, "gradcam": BASELINE}


# --- trials -------------------------------------------------------------------------------------


def test_trials_are_deterministic_and_seeded():
    fp = fingerprint(methods(), SETTINGS)
    first, again = build_trials(methods(), SETTINGS, fp), build_trials(methods(), SETTINGS, fp)
    assert first == again
    other = StudySettings(members=K, seed=1)
    assert fingerprint(methods(), other) != fp
    shuffled = build_trials(methods(), other, fingerprint(methods(), other))
    assert [t["intruder"] for t in shuffled] != [t["intruder"] for t in first] or [
        [c["key"] for c in t["choices"]] for t in shuffled
    ] != [[c["key"] for c in t["choices"]] for t in first]


def test_each_eligible_summary_gives_one_trial_with_an_intruder_of_its_class():
    trials = build_trials(methods(), SETTINGS, "fp")
    got = sorted((t["method"], t["class"], t["summary"]) for t in trials)
    # cat: 1-3 (relied on, >= k members); the small (4) and unfaithful (5) ones are left out; dog:
    # a single summary; bird: "wing" has exactly k members; gradcam: two summaries of k members.
    assert got == sorted(
        [("vislight", "cat", n) for n in (1, 2, 3)]
        + [("vislight", "bird", 1), ("vislight", "bird", 2)]
        + [("gradcam", "cat", 1), ("gradcam", "cat", 2)]
    )
    assert len({t["id"] for t in trials}) == len(trials)
    for t in trials:
        source = {"vislight": SUMMARIES, "gradcam": BASELINE}[t["method"]]["classes"][t["class"]]
        by_key = {}
        for s in source:
            for m in s["members"]:
                by_key.setdefault(m["key"], []).append(s)
        assert len(t["choices"]) == K + 1
        intruder = t["choices"][t["intruder"]]
        assert intruder["summary"] != t["summary"]
        if t["class"] == "cat" and t["method"] == "vislight":
            assert intruder["summary"] in {1, 2, 3}  # eligible summaries only
        shown = [c for i, c in enumerate(t["choices"]) if i != t["intruder"]]
        assert all(c["summary"] == t["summary"] for c in shown)
        assert [c["crop"] for c in t["choices"]] == [f"{t['id']}_{i}.png" for i in range(K + 1)]
        for word in (t["method"], t["class"], "intruder"):
            assert word not in t["id"]
    cat1 = next(
        t for t in trials if t["method"] == "vislight" and t["class"] == "cat" and t["summary"] == 1
    )
    ours = SUMMARIES["classes"]["cat"][0]
    shown_keys = {c["key"] for i, c in enumerate(cat1["choices"]) if i != cat1["intruder"]}
    assert shown_keys == {m["key"] for m in typical_first(ours)[:K]}
    # intruders come from an image without a member in the shown summary where one exists
    for t in trials:
        if t["class"] == "cat" and t["method"] == "vislight":
            own = SUMMARIES["classes"]["cat"][t["summary"] - 1]["members"]
            assert t["choices"][t["intruder"]]["key"] not in {m["key"] for m in own}
    # bird: summary 2's images all have a member in summary 1, whose intruder falls back to an
    # image not among the shown ones (30-32 shown)
    bird1 = next(t for t in trials if t["class"] == "bird" and t["summary"] == 1)
    assert bird1["choices"][bird1["intruder"]]["key"] in {"img-033", "img-034"}


def test_unfaithful_summaries_join_when_asked():
    settings = StudySettings(members=K, relied_on_only=False)
    cat = {
        t["summary"]
        for t in build_trials(methods(), settings)
        if t["class"] == "cat" and t["method"] == "vislight"
    }
    assert cat == {1, 2, 3, 5}  # numbered as the report does: relied-on summaries first


# --- the web app ---------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path):
    """A served study of the synthetic summaries: ``(study, port, run folder)``."""
    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text("secret: do-not-serve\n")
    trials = build_trials(methods(), SETTINGS, "fp")
    write_crops(run / "study" / "crops", trials, fake_image)
    doc = {"members": K, "trials": trials}
    study = Study(run / "study", doc, SETTINGS)
    server = make_server(study, "127.0.0.1", 0)
    thread = threading.Thread(target=serve, args=(study, server, 0.01), daemon=True)
    thread.start()
    yield study, server.server_address[1], run
    server.shutdown()
    thread.join(5)


def request(port: int, method: str, path: str, form: dict | None = None):
    """``(status, headers, body text)`` of one raw request (the path is sent as is)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = urlencode(form).encode() if form is not None else None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
    conn.close()
    return out


def test_paths_outside_the_crops_are_refused(app):
    study, port, run = app
    crop = next(iter(study.trials.values()))["choices"][0]["crop"]
    status, headers, _ = request(port, "GET", f"/crops/{crop}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    (study.crops / "evil.png").symlink_to(run / "config.yaml")
    refused = {
        "/crops/../../config.yaml": 403,
        "/crops/%2e%2e/%2e%2e/config.yaml": 403,
        "/crops/..%2f..%2fconfig.yaml": 403,
        "/crops/%2E%2E%2F%2E%2E%2Fconfig.yaml": 403,
        "/crops//etc/passwd": 403,
        "/crops/evil.png": 403,  # a link inside crops/ to a file outside
        "/crops/%252e%252e/%252e%252e/config.yaml": 404,
        "/crops/..\\..\\config.yaml": 404,
        "/crops/x.png%00.png": 404,
        "/crops/": 403,
        "/config.yaml": 404,
        "/study/trials.json": 404,
        "/crops/../trials.json": 403,
        "/../config.yaml": 404,
    }
    for path, expected in refused.items():
        status, _, body = request(port, "GET", path)
        assert status == expected, path
        assert "do-not-serve" not in body, path


def test_unreadable_requests_are_refused(app):
    study, port, _ = app
    many = {f"f{i}": "x" for i in range(20)}
    assert request(port, "POST", "/answer", many)[0] == 400
    assert request(port, "GET", "/trial?" + urlencode(many))[0] == 400
    assert request(port, "POST", "/answer", {"participant": "p", "name": "x" * 20_000})[0] == 400
    assert request(port, "POST", "/trial", {"participant": "p"})[0] == 404
    assert request(port, "PUT", "/answer")[0] == 501
    assert not study.answers.exists()


@pytest.mark.parametrize(
    "participant", ["", "a b", "../x", "<script>alert(1)</script>", "x" * 65, "é", "p\n1"]
)
def test_bad_participant_ids_are_refused(app, participant):
    _, port, _ = app
    status, _, body = request(port, "POST", "/start", {"participant": participant})
    assert status == 400 and "participant id is 1 to 64" in body
    assert "<script>alert" not in body
    status, _, body = request(port, "GET", "/trial?" + urlencode({"participant": participant}))
    assert status == 400 and "<script>alert" not in body


def test_a_participant_answers_resumes_and_never_sees_the_answer(app):
    study, port, _ = app
    status, headers, _ = request(port, "POST", "/start", {"participant": "p-1.A_b"})
    assert status == 303 and headers["Location"] == "/trial?participant=p-1.A_b"
    order = study.order("p-1.A_b")
    assert sorted(order) == sorted(study.trials)
    status, _, page = request(port, "GET", "/trial?participant=p-1.A_b")
    trial = study.trials[order[0]]
    assert status == 200 and f"value='{trial['id']}'" in page
    for secret in ("vislight", "gradcam", "intruder", *(c["key"] for c in trial["choices"])):
        assert secret not in page.lower(), secret
    assert page.count("type='radio'") == K + 1
    assert page.count("name='trial'") == 1 and "name='intruder'" not in page
    # an invalid answer re-shows the trial with the message; nothing is written
    for bad in ({"choice": "9", "name": "ear"}, {"choice": "0", "name": "  "}, {"name": "ear"}):
        form = {"participant": "p-1.A_b", "trial": trial["id"], **bad}
        status, _, page = request(port, "POST", "/answer", form)
        assert status == 400 and "id='error'" in page
    status, _, page = request(
        port,
        "POST",
        "/answer",
        {"participant": "p-1.A_b", "trial": "nope", "choice": "0", "name": "x"},
    )
    assert status == 400
    assert not study.answers.exists()
    form = {
        "participant": "p-1.A_b",
        "trial": trial["id"],
        "choice": str(trial["intruder"]),
        "name": " Ear\t",
    }
    status, headers, _ = request(port, "POST", "/answer", form)
    assert status == 303 and headers["Location"] == "/trial?participant=p-1.A_b"
    request(port, "POST", "/answer", form)  # the back button: the first answer stays
    (line,), bad = read_answers(study.answers)
    assert bad == 0
    assert line == {**line, "participant": "p-1.A_b", "trial": trial["id"], "method": trial["method"],
                    "class": trial["class"], "summary": trial["summary"], "choice": trial["intruder"],
                    "intruder": trial["intruder"], "correct": True, "options": K + 1, "name": "Ear",
                    "order": 1}  # fmt: skip
    assert line["time"].endswith("+00:00")
    # a restarted server resumes at the participant's second trial
    again = Study(study.folder, {"members": K, "trials": list(study.trials.values())}, SETTINGS)
    assert again.progress("p-1.A_b") == (1, len(order), study.trials[order[1]])
    for tid in order[1:]:
        request(port, "POST", "/answer", {**form, "trial": tid, "choice": "0"})
    status, headers, _ = request(port, "GET", "/trial?participant=p-1.A_b")
    assert status == 303 and headers["Location"] == "/done?participant=p-1.A_b"
    status, _, page = request(port, "GET", "/done?participant=p-1.A_b")
    assert status == 200 and f"answered {len(order)} of {len(order)}" in page
    assert len(read_answers(study.answers)[0]) == len(order)


def test_orders_are_per_participant_and_capped(tmp_path):
    trials = build_trials(methods(), SETTINGS, "fp")
    study = Study(tmp_path, {"members": K, "trials": trials}, SETTINGS)
    assert study.order("a") == study.order("a") != study.order("b")
    capped = Study(
        tmp_path, {"members": K, "trials": trials}, StudySettings(members=K, max_trials=2)
    )
    assert capped.order("a") == study.order("a")[:2]


def test_concurrent_answers_are_whole_lines(tmp_path):
    trials = build_trials(methods(), SETTINGS, "fp")
    (tmp_path / "answers.jsonl").write_bytes(b'{"participant": "cut')  # a killed write
    study = Study(tmp_path, {"members": K, "trials": trials}, SETTINGS)
    people = [f"p{i}" for i in range(8)]
    barrier = threading.Barrier(len(people) + 2)

    def answer_all(participant):
        barrier.wait()
        for tid in study.order(participant):
            study.record(participant, tid, "1", "a" * 60)

    threads = [threading.Thread(target=answer_all, args=(p,)) for p in [*people, "p0", "p1"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    answers, bad = read_answers(tmp_path / "answers.jsonl")
    assert bad == 1  # the cut line, ended by the first append
    assert len(answers) == len(people) * len(trials)  # p0 and p1 twice: no duplicates
    assert len({(a["participant"], a["trial"]) for a in answers}) == len(answers)
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    assert all(json.loads(line)["name"] == "a" * 60 for line in lines[1:])


# --- the score -----------------------------------------------------------------------------------


def answer(participant, summary, correct, name, method="vislight", cls="cat"):
    return {"participant": participant, "trial": f"{method}{cls}{summary}", "method": method,
            "class": cls, "summary": summary, "choice": 0, "intruder": 0 if correct else 1,
            "correct": correct, "options": 5, "name": name}  # fmt: skip


def test_score_gives_clopper_pearson_intervals_and_names():
    answers = [answer(f"p{i}", 1, i < 8, ["Bar", " bar ", "BAR", "disc"][i % 4]) for i in range(10)]
    answers += [answer("p0", 1, False, "dup")]  # a second answer of p0 to the trial: ignored
    answers += [answer(f"p{i}", 2, i < 1, "x", method="gradcam") for i in range(4)]
    tags = {("vislight", "cat", 1): "bar", ("gradcam", "cat", 2): None}
    result = score(answers, tags, 0.95, ["vislight", "gradcam"])
    assert result["answers"] == 14 and result["participants"] == 10
    s1, s2 = result["summaries"]
    assert (s1["answers"], s1["correct"], s1["accuracy"]) == (10, 8, 0.8)
    assert s1["ci"] == pytest.approx([0.44390, 0.97479], abs=1e-4)  # Clopper-Pearson 8/10
    assert s1["chance"] == pytest.approx(0.2)
    assert s1["p_above_chance"] == pytest.approx(
        binomtest(8, 10, 0.2, alternative="greater").pvalue
    )
    assert s1["names"] == [["bar", 8], ["disc", 2]] and s1["tag"] == "bar"
    assert s1["tag_agreement"] == pytest.approx(0.8)
    assert s2["tag_agreement"] is None and s2["accuracy"] == 0.25
    assert list(result["methods"]) == ["vislight", "gradcam"]
    g = result["methods"]["gradcam"]
    ci = binomtest(1, 4).proportion_ci(0.95, method="exact")
    assert g["ci"] == pytest.approx([ci.low, ci.high]) and g["summaries"] == 1
    text = format_score(result)
    assert "95% CI" in text and "bar ×8, disc ×2" in text and "[0.444, 0.975]" in text


# --- a finished run: prepare, score_run and the command line ------------------------------------


@pytest.fixture
def run(tiny_reference, tmp_path) -> Path:
    """A copy of the tiny run's config and summaries (no data needed: crops from fake images),
    with a gradcam baseline (its summaries: the run's own)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "summaries.json", "metrics.json"):
        shutil.copy(tiny_reference / name, out / name)
    (out / "summaries" / "baselines").mkdir(parents=True)
    shutil.copy(tiny_reference / "summaries.json", out / "summaries/baselines/gradcam.json")
    return out


def test_prepare_builds_once_and_refuses_a_changed_run_with_answers(run):
    from vislight.finished_run import FinishedRun

    settings = StudySettings(members=2, baselines=("gradcam", "kmeans"))
    finished = FinishedRun.open(run)
    doc = prepare(finished, settings, image_of=fake_image)
    assert doc["methods"] == ["vislight", "gradcam"] and "'kmeans' left out" in doc["notes"][0]
    crops = sorted((run / "study/crops").glob("*.png"))
    assert len(crops) == len(doc["trials"]) * 3 and doc["trials"]

    def no_images(index):
        raise AssertionError("rebuilt")

    assert prepare(FinishedRun.open(run), settings, image_of=no_images) == doc
    changed = json.loads((run / "summaries.json").read_text())
    for summaries in changed["classes"].values():
        for s in summaries:
            s["coherence"] += 0.01
    (run / "summaries.json").write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match="holds answers"):
        prepare(FinishedRun.open(run), settings, image_of=fake_image, answers_exist=True)
    rebuilt = prepare(FinishedRun.open(run), settings, image_of=fake_image)
    assert rebuilt["fingerprint"] != doc["fingerprint"]
    assert len(list((run / "study/crops").glob("*.png"))) == len(crops)  # stale crops removed
    with pytest.raises(ConfigError, match="no trial to show"):
        prepare(FinishedRun.open(run), StudySettings(members=9), image_of=fake_image)


def test_score_run_and_its_command_line(run, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["score", str(run)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vislight.study: error: no answers yet") and "\n" not in err
    (run / "study").mkdir()
    lines = [
        answer("a", 1, True, "Disc", cls="disc_triangle"),
        answer("b", 1, False, "disc", cls="disc_triangle"),
    ]
    (run / "study/answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in lines) + "{cut")
    result = score_run(run, ["study.confidence=0.9"], announce=lambda s: None)
    assert result["unreadable_lines"] == 1 and result["confidence"] == 0.9
    assert result["methods"]["vislight"]["accuracy"] == 0.5
    assert json.loads((run / "study/score.json").read_text()) == result
    main(["score", str(run)])
    assert "disc ×2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("study.members=1", "study.members=1 is out of range"),
        ("study.port=70000", "study.port=70000 is out of range"),
        ("study.confidence=1", "study.confidence=1 is out of range"),
        ("study.prot=9000", "study.prot"),  # an unknown key
        ("study.answers=../x.jsonl", "must be a file name ending in .jsonl"),
        ("study.baselines=[../../etc]", "is not a baseline name"),
        ("study.relied_on_only=maybe", "must be true or false"),
    ],
)
def test_bad_settings_stop_with_one_line(run, capsys, override, message):
    with pytest.raises(SystemExit) as stop:
        main(["serve", str(run), override])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_command_line_help_and_missing_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["serve", str(tmp_path / "nope")])
    assert stop.value.code == 2 and "does not exist" in capsys.readouterr().err
