"""What every command shares: the one-line usage error, arguments from the options table, the console."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Iterable, Optional

from ..options import RunOptions, flagged_fields, spec
from ..progress import Progress

EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shell tools report it
ACQUISITION = ("thickness_mm", "increment_mm", "profile")
TRAINING = ("preset", "iterations", "device", "seed", "precision", "training_noise", "threads", "consistency", "consistency_lambda", "allow_non_hu",
            "force")
PROGRESS_STYLES = ("bar", "json", "none")


class Parser(argparse.ArgumentParser):
    """argparse with one `error:` line, exit 2, as every other error."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_ERROR)


def _argument_type(name: str):
    option = spec(name)

    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def add_options(parser: argparse.ArgumentParser, names: Iterable[str], **overrides: dict) -> None:
    """Arguments for RunOptions fields `names`, from the options table; overrides: field name -> argparse keywords."""
    defaults = {f.name: f.default for f in flagged_fields()}
    for name in names:
        option = spec(name)
        keywords: dict = {"dest": name, "help": option.help}
        if option.kind == "flag":
            keywords["action"] = "store_true"
        elif option.kind in ("choice", "switch"):
            keywords.update(choices=tuple(option.choices), default=defaults[name] if option.kind == "choice" else None)
        elif option.kind == "path":
            keywords["default"] = None
        else:
            keywords.update(type=_argument_type(name), default=defaults[name])
        if option.kind not in ("flag", "choice", "switch"):  # shown as the flag names it, not the field
            keywords["metavar"] = option.metavar or option.flag[2:].upper().replace("-", "_")
        keywords.update(overrides.get(name, {}))
        if keywords.get("help") is None:
            keywords.pop("help")
        parser.add_argument(option.flag, **keywords)


def add_volume_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="DICOM series folder or .nrrd/.nhdr/.nii/.nii.gz/.mha/.mhd file")
    parser.add_argument("--allow-external-data", action="store_true",
                        help="read a .nhdr/.mhd whose data file lies outside the header's folder")


def add_progress(parser: argparse.ArgumentParser, help: Optional[str] = "progress on stderr: a bar, JSON lines (for "
                 "the Slicer module), or nothing") -> None:
    parser.add_argument("--progress", choices=PROGRESS_STYLES, default="bar", **({"help": help} if help else {}))


def run_options(args: argparse.Namespace, **engine) -> RunOptions:
    """The RunOptions that the parsed arguments give (engine: settings no flag gives, e.g. confidence=True)."""
    return replace(RunOptions.from_values(vars(args)), **engine)


class Console:
    """Where a command's warnings and progress go on stderr: plain lines and a bar, or one strict JSON object a line."""

    def __init__(self, style: str = "bar") -> None:
        self.style, self.bar, self.stage = style, None, None

    def warn(self, notes: Iterable[str]) -> None:
        for note in notes:
            if self.style == "json":
                json_line({"warning": note})
            else:
                sys.stderr.write(f"warning: {note}\n")

    def __call__(self, progress: Progress) -> None:
        """Show one progress report: a tqdm bar per stage, a JSON line, or nothing."""
        if self.style == "json":
            json_line(progress.as_dict())
        elif self.style == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # e.g. Slicer's Python ships no tqdm: one plain line per stage and tenth
                self._plain_line(progress)
                return

            if progress.stage != self.stage:
                self.close()
                self.stage = progress.stage
                self.bar = tqdm(total=1000, desc=progress.stage, file=sys.stderr, leave=True,
                                bar_format="{desc:<12}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(progress.message[:90], refresh=False)
            self.bar.update(int(round(progress.fraction * 1000)) - self.bar.n)  # redraws at most every 0.1 s

    def _plain_line(self, progress: Progress) -> None:
        tenth = (progress.stage, int(progress.fraction * 10))
        if tenth != self.stage:
            self.stage = tenth
            sys.stderr.write(f"{progress.stage}: {100 * progress.fraction:3.0f}% {progress.message[:90]}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def json_line(event: dict) -> None:
    """One standard JSON object on stderr: NaN and infinities become null."""
    from ..metrics import strict_json

    sys.stderr.write(json.dumps(strict_json(event), allow_nan=False) + "\n")
    sys.stderr.flush()
