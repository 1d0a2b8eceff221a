"""``python -m vislight.apply RUN_DIR [key=value ...]``: a run's summaries in new images."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from vislight import CONF_DIR
from vislight.interrupt import RunInterrupted, stop_on_signals

EPILOG = f"""
Overrides (key=value) change the run's config for this application, e.g.
  apply.images=/path/to/photos       any folder of images (files, or class-named sub-folders)
  data.root=/path/to/photos          a folder of class folders (folder data) or the dataset root
  data.split=test                    which split of the run's dataset
  apply.name=field_photos            results go to RUN_DIR/apply/<name>/
  apply.target=label                 look for the images' labelled class, not the predicted one
The apply settings and their defaults: {CONF_DIR / "apply" / "default.yaml"}.
Writes RUN_DIR/apply/<name>/apply.json, index.html and a page per class; the run's report links
them (report/applications.html). Exit codes: 0 done, 2 bad input, 130/143 stopped by a signal.
"""


def _exit(message: str, code: int) -> NoReturn:
    print(f"vislight.apply: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vislight.apply",
        description="Locate a finished run's summaries in new images: per image, which of its "
        "class's summaries the network uses and where (the image's strategy), confirmed by a "
        "deletion check, and a flag when none is found (atypical).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="folder of a finished vislight run (with summaries.json)")
    parser.add_argument("overrides", nargs="*", help="key=value changes, see below")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from vislight.apply.run import apply_run

    try:
        with stop_on_signals():
            result = apply_run(args.run_dir, args.overrides)
    except RunInterrupted as stop:
        _exit(f"{stop}; nothing was written, rerun the same command", stop.exit_code)
    except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
        if os.environ.get("VISLIGHT_DEBUG"):
            raise
        _exit(f"error: {e}", 2)
    out = result["run"] + f"/apply/{result['name']}"
    atypical = sum(bool(e["atypical"]) for e in result["images"])
    print(f"{len(result['images'])} images, {atypical} atypical: {out}/index.html")


if __name__ == "__main__":
    main()
