"""The study's web app (standard library ``http.server``, one thread per request).

Pages (HTML from the autoescaped ``study_*.html.j2`` templates; no script, no outside resource)::

    GET  /                          start page: the task, the participant id
    POST /start      participant    -> 303 /trial?participant=ID (400: an invalid id)
    GET  /trial?participant=ID      the participant's next unanswered trial, or -> 303 /done
    POST /answer     participant, trial, choice, name
                                    records the answer, -> 303 /trial?participant=ID
    GET  /done?participant=ID       end page
    GET  /crops/NAME                a crop, only a PNG file inside study/crops/ (403 outside)

Every other path is 404. A participant id is 1-64 of ``A-Z a-z 0-9 _ . -``. Each participant sees
the trials in their own order (shuffled by ``study.seed`` and the id; the first
``study.max_trials``), methods blind: pages and URLs name neither the method nor the intruder
(crops are ``<opaque trial id>_<position>.png``). Coming back with the same id resumes at the first
unanswered trial of that order; a trial answered twice (back button) keeps the first answer.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import sys
import threading
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from vislight.errors import ConfigError
from vislight.report.render import render
from vislight.study.answers import append_answer, ends_cut, read_answers
from vislight.study.settings import StudySettings
from vislight.study.trials import CROPS_DIR

PARTICIPANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_NAME = 64  # characters of a part's name
MAX_BODY = 16_384  # bytes of a form post
HEADERS = {  # on every response: no script, nothing from elsewhere, no referrer, not framed
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class AnswerError(ValueError):
    """An answer the participant must correct (the message is shown on the trial page)."""


def check_participant(value: str) -> str:
    """``value`` when it is a valid participant id, else :class:`AnswerError`."""
    if not isinstance(value, str) or not PARTICIPANT.fullmatch(value):
        raise AnswerError(
            "a participant id is 1 to 64 letters, digits, '_', '-' or '.' (no spaces)"
        )
    return value


def clean_name(value: str) -> str:
    """A part's name as recorded: control characters dropped, spaces collapsed, trimmed."""
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in value)
    return " ".join(text.split())


class Study:
    """The trials being served, each participant's order and answered trials, the answers file."""

    def __init__(self, folder: Path, doc: dict, settings: StudySettings):
        """``folder``: ``RUN_DIR/study``; ``doc``: the content of its ``trials.json``."""
        self.folder, self.settings = Path(folder), settings
        self.crops = (self.folder / CROPS_DIR).resolve()
        self.trials = {t["id"]: t for t in doc["trials"]}
        self.options = int(doc["members"]) + 1
        self.answers = self.folder / settings.answers
        self.lock = threading.Lock()
        self._answered: dict[str, set[str]] = {}
        for answer in read_answers(self.answers)[0]:
            if answer["trial"] in self.trials:
                self._answered.setdefault(str(answer["participant"]), set()).add(answer["trial"])
        self._cut = ends_cut(self.answers)

    def order(self, participant: str) -> list[str]:
        """The trial ids ``participant`` answers, in their order."""
        ids = list(self.trials)
        random.Random(f"{self.settings.seed}:{participant}").shuffle(ids)
        return ids[: self.settings.max_trials] if self.settings.max_trials else ids

    def progress(self, participant: str) -> tuple[int, int, dict | None]:
        """``(answered, total, next trial or None)`` of ``participant``."""
        order = self.order(participant)
        with self.lock:
            done = self._answered.get(participant, set())
            todo = [t for t in order if t not in done]
        return len(order) - len(todo), len(order), self.trials[todo[0]] if todo else None

    def record(self, participant: str, trial_id: str, choice: str, name: str) -> dict | None:
        """Append one answer (the line of :mod:`vislight.study.answers`) and return it; None when
        ``participant`` already answered that trial. :class:`AnswerError`: an invalid answer."""
        check_participant(participant)
        order = self.order(participant)
        if trial_id not in order:
            raise AnswerError("this question is not one of yours: start again from the start page")
        if not (choice.isascii() and choice.isdigit() and int(choice) < self.options):
            raise AnswerError("pick the picture whose region does not belong")
        name = clean_name(name)
        if not name:
            raise AnswerError("name the part the other regions show, in a word")
        if len(name) > MAX_NAME:
            raise AnswerError(f"a name of at most {MAX_NAME} characters, please")
        trial = self.trials[trial_id]
        with self.lock:
            done = self._answered.setdefault(participant, set())
            if trial_id in done:
                return None
            answer = {
                "participant": participant,
                "trial": trial_id,
                "method": trial["method"],
                "class": trial["class"],
                "summary": trial["summary"],
                "choice": int(choice),
                "intruder": trial["intruder"],
                "correct": int(choice) == trial["intruder"],
                "options": self.options,
                "name": name,
                "order": order.index(trial_id) + 1,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            append_answer(self.answers, answer, newline_first=self._cut)
            self._cut = False
            done.add(trial_id)
        return answer

    def crop(self, name: str) -> Path | int:
        """The file of ``/crops/<name>`` (``name`` URL-decoded), or the HTTP status refusing it:
        403 when it resolves outside ``study/crops``, 404 when it is no PNG file there."""
        try:
            path = (self.crops / name).resolve()
        except (OSError, ValueError):
            return HTTPStatus.NOT_FOUND
        if not path.is_relative_to(self.crops) or path == self.crops:
            return HTTPStatus.FORBIDDEN
        return path if path.suffix == ".png" and path.is_file() else HTTPStatus.NOT_FOUND


def _fields(query: str) -> dict[str, str] | None:
    """The first value of each field of a query string or form body; None when unreadable."""
    try:
        fields = parse_qs(query, keep_blank_values=True, max_num_fields=8)
    except ValueError:  # too many fields
        return None
    return {key: values[0] for key, values in fields.items()}


def make_handler(study: Study) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving ``study``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "vislight-study"
        sys_version = ""
        timeout = 30  # seconds a connection may stay silent

        def log_message(self, format, *args):  # noqa: A002 - quiet: no line per request
            pass

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            routes: dict[tuple[str, str], Callable] = {
                ("GET", "/"): self._start_page,
                ("POST", "/start"): self._start,
                ("GET", "/trial"): self._trial,
                ("POST", "/answer"): self._answer,
                ("GET", "/done"): self._done,
            }
            try:
                if method == "GET" and url.path.startswith("/crops/"):
                    return self._crop(unquote(url.path[len("/crops/") :]))
                route = routes.get((method, url.path))
                if route is None:
                    return self._message(HTTPStatus.NOT_FOUND, "Not found", "No such page.")
                fields = _fields(url.query) if method == "GET" else self._form()
                if fields is None:
                    return self._message(HTTPStatus.BAD_REQUEST, "Bad request", "Unreadable form.")
                route(fields)
            except (BrokenPipeError, ConnectionResetError):
                return  # the browser went away
            except Exception as e:  # noqa: BLE001 - one page, one line on the console
                print(f"vislight.study: error serving {method} {url.path}: {e}", file=sys.stderr)
                if os.environ.get("VISLIGHT_DEBUG"):
                    traceback.print_exc()
                self._message(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    "Server error",
                    "Something went wrong here; please tell the person running the study.",
                )

        def _form(self) -> dict | None:
            """The posted form's fields; None (answered 400) when missing, too long or unreadable."""
            length = self.headers.get("Content-Length", "")
            if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
                return None
            return _fields(self.rfile.read(int(length)).decode("utf-8", "replace"))

        def _start_page(self, fields, error=None, status=HTTPStatus.OK) -> None:
            participant = fields.get("participant", "")
            self._html(status, render(
                "study_start.html.j2", options=study.options, error=error,
                participant=participant[:64],
                total=len(study.order(participant if PARTICIPANT.fullmatch(participant) else "")),
            ))  # fmt: skip

        def _start(self, fields) -> None:
            try:
                participant = check_participant(fields.get("participant", "").strip())
            except AnswerError as e:
                return self._start_page(fields, str(e), HTTPStatus.BAD_REQUEST)
            self._redirect("/trial", participant)

        def _trial(self, fields, error=None, status=HTTPStatus.OK, previous=None) -> None:
            try:
                participant = check_participant(fields.get("participant", ""))
            except AnswerError as e:
                return self._start_page({}, str(e), HTTPStatus.BAD_REQUEST)
            answered, total, trial = study.progress(participant)
            if trial is None:
                return self._redirect("/done", participant)
            previous = previous if previous and previous.get("trial") == trial["id"] else {}
            self._html(status, render(
                "study_trial.html.j2", participant=participant, trial=trial["id"],
                number=answered + 1, total=total, class_name=trial["class"], error=error,
                choices=[
                    {"value": pos, "src": "/crops/" + quote(c["crop"])}
                    for pos, c in enumerate(trial["choices"])
                ],
                chosen=int(previous["choice"])
                if previous.get("choice", "").isascii() and previous.get("choice", "").isdigit()
                else -1,
                part_name=previous.get("name", "")[:MAX_NAME], max_name=MAX_NAME,
            ))  # fmt: skip

        def _answer(self, fields) -> None:
            participant = fields.get("participant", "")
            try:
                study.record(
                    participant,
                    fields.get("trial", ""),
                    fields.get("choice", ""),
                    fields.get("name", ""),
                )
            except AnswerError as e:
                if not PARTICIPANT.fullmatch(participant):
                    return self._start_page({}, str(e), HTTPStatus.BAD_REQUEST)
                return self._trial(fields, str(e), HTTPStatus.BAD_REQUEST, previous=fields)
            self._redirect("/trial", participant)

        def _done(self, fields) -> None:
            try:
                participant = check_participant(fields.get("participant", ""))
            except AnswerError as e:
                return self._start_page({}, str(e), HTTPStatus.BAD_REQUEST)
            answered, total, _ = study.progress(participant)
            self._html(HTTPStatus.OK, render(
                "study_end.html.j2", participant=participant, answered=answered, total=total
            ))  # fmt: skip

        def _crop(self, name: str) -> None:
            found = study.crop(name)
            if isinstance(found, int):
                heading = "Refused" if found == HTTPStatus.FORBIDDEN else "Not found"
                return self._message(HTTPStatus(found), heading, "No such picture.")
            self._send(HTTPStatus.OK, found.read_bytes(), "image/png", cache="max-age=3600")

        def _message(self, status: HTTPStatus, heading: str, message: str) -> None:
            self._html(status, render("study_message.html.j2", heading=heading, message=message))

        def _redirect(self, path: str, participant: str) -> None:
            self._send(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                Location=f"{path}?{urlencode({'participant': participant})}",
            )

        def _html(self, status: HTTPStatus, page: str) -> None:
            self._send(status, page.encode("utf-8"), "text/html; charset=utf-8")

        def _send(self, status, body: bytes, ctype: str, cache="no-store", **headers) -> None:
            self.send_response(status)
            for key, value in {**HEADERS, **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a silent connection never holds the stop; writes hold study.lock


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Stop(Exception):
    """Raised by the SIGINT / SIGTERM handler to leave ``serve_forever``."""


def make_server(study: Study, host: str, port: int) -> ThreadingHTTPServer:
    """The (bound, not yet serving) server of ``study``; :class:`ConfigError` when the address
    cannot be bound."""
    server_class = _Server6 if ":" in host else _Server
    try:
        return server_class((host, port), make_handler(study))
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; pass another study.port=N "
            "(0 = any free port) or study.host=ADDRESS"
        ) from None


def url_of(server: ThreadingHTTPServer) -> str:
    """The study's start page URL (``http://host:port/``)."""
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(study: Study, server: ThreadingHTTPServer, poll_interval: float = 0.2) -> None:
    """Serve until SIGINT or SIGTERM (in the main thread) or ``server.shutdown()`` (which waits up
    to ``poll_interval`` s); then wait for an answer being written and close."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame):
            raise _Stop(signum)

        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever(poll_interval=poll_interval)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        server.server_close()
        with study.lock:  # an answer being appended is complete before the process ends
            pass


def serve_run(run_dir: str | Path, overrides: Sequence[str] = (), announce=print) -> None:
    """``python -m vislight.study serve RUN_DIR [overrides]``: build (or reuse) the trials, then
    serve them until stopped."""
    from vislight.finished_run import FinishedRun
    from vislight.study.trials import prepare

    run = FinishedRun.open(run_dir, overrides)
    settings = StudySettings.from_config(run.cfg.get("study"))
    answers = run.run.study / settings.answers
    doc = prepare(run, settings, answers_exist=bool(read_answers(answers)[0]))
    for note in doc["notes"]:
        announce(f"vislight.study: {note}")
    study = Study(run.run.study, doc, settings)
    server = make_server(study, settings.host, settings.port)
    methods = ", ".join(doc["methods"])
    announce(
        f"vislight.study: {len(doc['trials'])} trials ({methods}; {study.options} pictures each), "
        f"answers to {answers}"
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        announce(f"vislight.study: study.host={settings.host}: other machines can reach the study")
    announce(f"vislight.study: serving at {url_of(server)} (Ctrl-C to stop)")
    serve(study, server)
    announce("vislight.study: stopped")
