"""``python -m vislight.study {serve,score} RUN_DIR [study.KEY=VALUE ...]``: the user-study kit.

Exit codes: 0 done (``serve``: stopped by Ctrl-C / SIGTERM), 2 a bad run folder, setting or
address (one line on stderr, no traceback; ``VISLIGHT_DEBUG=1`` shows it), 1 a file that could not
be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

EPILOG = """\
examples:
  python -m vislight.study serve outputs/runs/2025-01-31_10-00-00
  python -m vislight.study serve RUN_DIR study.members=3 study.max_trials=20 study.port=9000
  python -m vislight.study serve RUN_DIR study.baselines=[gradcam,kmeans]
  python -m vislight.study score RUN_DIR study.confidence=0.99

settings (conf/study/default.yaml, changed with study.KEY=VALUE after RUN_DIR):
  members (4)          members of a summary shown per trial, plus one intruder
  baselines ([gradcam])  baselines mixed in blind (those the run kept: baselines.enabled=true)
  min_support (null)   least support of a shown summary
  max_trials (null)    trials per participant (null = all)
  host (127.0.0.1), port (8765; 0 = any free port)
  seed (0)             trials and each participant's order
  confidence (0.95)    level of the Clopper-Pearson intervals
  relied_on_only (true)  skip summaries the model does not rely on
  answers (answers.jsonl)  answers file in RUN_DIR/study/ (a new name starts a new study)

files: RUN_DIR/study/trials.json, crops/*.png, answers.jsonl (one JSON line per answer),
score.json.
"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m vislight.study``."""
    p = argparse.ArgumentParser(
        prog="python -m vislight.study",
        description="User study of a finished run's visual summaries: participants pick the "
        "intruder among members of a summary and name the part (intruder detection, methods "
        "blind); then score the answers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve,score}")
    for name, text in (
        ("serve", "build the trials (once) and serve the study's web app until Ctrl-C"),
        ("score", "intruder-detection accuracy per summary and method, names against tags"),
    ):
        cmd = sub.add_parser(name, help=text, description=text, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        cmd.add_argument("run_dir", metavar="RUN_DIR", help="folder of a finished vislight run")
        cmd.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE",
            help="config overrides, e.g. study.port=9000 or data.root=/path (the run's data)",
        )  # fmt: skip
    return p


def _exit(message: str, code: int) -> NoReturn:
    print(f"vislight.study: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from vislight.errors import ConfigError
    from vislight.io import WriteError

    try:
        if args.command == "serve":
            from vislight.study.server import serve_run

            serve_run(args.run_dir, args.overrides, announce=lambda s: print(s, flush=True))
        else:
            from vislight.study.score import score_run

            score_run(args.run_dir, args.overrides)
    except KeyboardInterrupt:
        _exit("stopped", 130)
    except (ConfigError, WriteError, FileNotFoundError, ValueError) as e:
        if os.environ.get("VISLIGHT_DEBUG"):
            raise
        _exit(f"error: {e}", 1 if isinstance(e, WriteError) else 2)


if __name__ == "__main__":
    main()
