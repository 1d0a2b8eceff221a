"""``python -m vislight.study score RUN_DIR``: intruder-detection accuracy of the recorded answers.

Per summary and per method: answers, correct answers, accuracy with its Clopper-Pearson (exact
binomial) interval at ``study.confidence``, the chance level ``1 / options`` and the one-sided
binomial p-value of doing better than chance; per summary also the participants' most frequent
names (lower-cased, spaces collapsed) beside the summary's automatic tag, and the share of names
equal to the tag. A participant's second answer to a trial (none are recorded; a hand-edited file)
is ignored.

``study/score.json`` (written atomically)::

    {"answers": int, "participants": int, "unreadable_lines": int, "confidence": 0.95,
     "methods": {method: {"answers", "correct", "accuracy", "ci": [low, high], "chance",
                          "p_above_chance", "summaries", "tag_agreement"}},
     "summaries": [{"method", "class", "summary", "tag", "answers", "correct", "accuracy",
                    "ci": [low, high], "chance", "p_above_chance",
                    "names": [[name, count], ...] (most frequent first, at most 3),
                    "tag_agreement": share of names equal to the tag, or null}]}
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from scipy.stats import binomtest

from vislight.errors import ConfigError
from vislight.io import write_json
from vislight.study.answers import read_answers
from vislight.study.settings import OURS, StudySettings
from vislight.study.trials import load_trials

SCORE_FILE = "score.json"
TOP_NAMES = 3


def normalise(name: str) -> str:
    """A name as counted: lower-cased, spaces collapsed."""
    return " ".join(str(name).lower().split())


def _measures(answers: list[dict], confidence: float) -> dict:
    """answers / correct / accuracy / ci / chance / p_above_chance of some answers (at least one)."""
    n, k = len(answers), sum(bool(a["correct"]) for a in answers)
    chance = sum(1 / int(a.get("options") or 2) for a in answers) / n
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return {
        "answers": n,
        "correct": k,
        "accuracy": k / n,
        "ci": [float(ci.low), float(ci.high)],
        "chance": chance,
        "p_above_chance": float(binomtest(k, n, chance, alternative="greater").pvalue),
    }


def _agreement(answers: list[dict], tags: dict) -> float | None:
    """Share of ``answers`` whose name equals their summary's tag (None: no answer has a tag)."""
    tagged = [a for a in answers if tags.get(_summary_key(a))]
    if not tagged:
        return None
    return sum(
        normalise(a.get("name", "")) == normalise(tags[_summary_key(a)]) for a in tagged
    ) / len(tagged)


def _summary_key(answer: dict) -> tuple:
    return answer["method"], answer["class"], answer["summary"]


def score(answers: list[dict], tags: dict, confidence: float, methods: Sequence[str] = ()) -> dict:
    """The content of ``score.json`` (without ``unreadable_lines``) of ``answers`` (lines of the
    answers file); ``tags``: ``{(method, class, summary): tag or None}``; ``methods``: the order
    of the methods (others follow, by name)."""
    seen, kept = set(), []
    for a in answers:
        if (a["participant"], a["trial"]) not in seen:
            seen.add((a["participant"], a["trial"]))
            kept.append(a)
    by_summary, by_method = defaultdict(list), defaultdict(list)
    for a in kept:
        by_summary[_summary_key(a)].append(a)
        by_method[a["method"]].append(a)
    order = [m for m in methods if m in by_method] + sorted(set(by_method) - set(methods))
    summaries = []
    for key in sorted(by_summary, key=lambda k: (order.index(k[0]), str(k[1]), k[2])):
        group = by_summary[key]
        names = Counter(normalise(a.get("name", "")) for a in group if normalise(a.get("name", "")))
        summaries.append({
            "method": key[0], "class": key[1], "summary": key[2], "tag": tags.get(key),
            **_measures(group, confidence),
            "names": [[name, count] for name, count in names.most_common(TOP_NAMES)],
            "tag_agreement": _agreement(group, tags),
        })  # fmt: skip
    return {
        "answers": len(kept),
        "participants": len({a["participant"] for a in kept}),
        "confidence": confidence,
        "methods": {
            m: {
                **_measures(by_method[m], confidence),
                "summaries": sum(s["method"] == m for s in summaries),
                "tag_agreement": _agreement(by_method[m], tags),
            }
            for m in order
        },
        "summaries": summaries,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_score(result: dict) -> str:
    """``result`` (:func:`score`) as the two tables ``score`` prints: per method, per summary."""
    level = f"{round(result['confidence'] * 100, 2):g}%"
    head = ["answers", "correct", "accuracy", f"{level} CI", "chance", "p>chance"]

    def cells(r: dict) -> list[str]:
        lo, hi = r["ci"]
        return [str(r["answers"]), str(r["correct"]), _pct(r["accuracy"]),
                f"[{lo:.3f}, {hi:.3f}]", _pct(r["chance"]), f"{r['p_above_chance']:.3g}"]  # fmt: skip

    methods = [["method", *head, "tag agreement"]] + [
        [m, *cells(r), _pct(r["tag_agreement"])] for m, r in result["methods"].items()
    ]
    summaries = [["method", "class", "summary", *head, "tag", "names"]] + [
        [
            s["method"],
            str(s["class"]),
            str(s["summary"]),
            *cells(s),
            s["tag"] or "–",
            ", ".join(f"{n} ×{c}" for n, c in s["names"]) or "–",
        ]  # fmt: skip
        for s in result["summaries"]
    ]
    return (
        f"intruder detection: {result['answers']} answers from {result['participants']} "
        f"participants (Clopper-Pearson {level} intervals)\n\n"
        f"{_table(methods)}\n\n{_table(summaries)}"
    )


def score_run(run_dir: str | Path, overrides: Sequence[str] = (), announce=print) -> dict:
    """``python -m vislight.study score RUN_DIR [overrides]``: score the answers, write
    ``study/score.json``, print the tables; returns the content of score.json."""
    from vislight.finished_run import FinishedRun

    run = FinishedRun.open(run_dir, overrides)
    settings = StudySettings.from_config(run.cfg.get("study"))
    path = run.run.study / settings.answers
    answers, unreadable = read_answers(path)
    if not answers:
        raise ConfigError(
            f"no answers yet in {path}"
            + (f" ({unreadable} unreadable lines)" if unreadable else "")
            + ": run `python -m vislight.study serve RUN_DIR` and let participants answer first"
        )
    doc = load_trials(run.run.study) or {"trials": [], "methods": [OURS]}
    tags = {(t["method"], t["class"], t["summary"]): t.get("tag") for t in doc["trials"]}
    result = {
        **score(answers, tags, settings.confidence, doc["methods"]),
        "unreadable_lines": unreadable,
    }
    write_json(run.run.study / SCORE_FILE, result)
    announce(format_score(result))
    if unreadable:
        announce(f"vislight.study: {unreadable} unreadable lines of {path} left out")
    announce(f"vislight.study: wrote {run.run.study / SCORE_FILE}")
    return result
