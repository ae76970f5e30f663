"""Every output of a run, checked before any work and published all together at the end, verified, never clobbered.

A run names its outputs first (`OutputPlan`): each path is checked at once (type, folder exists and is
writable, name length, not an input, not inside a DICOM input folder, not another output of the run,
no existing file without overwrite) and stale partial files of dead runs in those folders are removed.
At the end each artefact is written to a temporary `.NAME.sr4zct-PID-N.partial.EXT` beside its target
(a DICOM series to a staging folder `.NAME.sr4zct-PID-N.partial`), fsynced and verified by reading it back
(`Publication.stage`, `stage_folder`); only when every artefact passed are they published, series folders
first: a hard link or rename (no clobber: exactly one of two racing runs wins) or, with overwrite, a
replacement that keeps the old file or series aside (`.NAME.sr4zct-PID-N.old`) until everything is in place
and puts it back when anything fails. A cancel waits for the publication to finish or roll back. A failure
leaves every old file as it was; what a killed run leaves is recognised by its dead process id and cleaned.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import Cancelled, InputError, ResourceError, check_cancelled

PARTIAL_PATTERN = re.compile(r"^\.(?P<name>.+)\.sr4zct-(?P<pid>\d+)-\d+\.partial(?P<ext>.*)$")
ASIDE_PATTERN = re.compile(r"^\.(?P<name>.+)\.sr4zct-(?P<pid>\d+)-\d+\.old$")  # an old output during its swap
SPACE_MARGIN_BYTES = 16 * 2**20  # leave this much free beyond the estimate


_counter = itertools.count()


def partial_name(path: Path, serial: int = 0) -> Path:
    """The temporary name of `path` while it is written: recognisable, with this process id, same extension."""
    name = path.name
    extension = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    return path.with_name(f".{name}.sr4zct-{os.getpid()}-{serial}.partial{extension}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: Path) -> list[str]:
    """Clean what dead sr4zct runs (SIGKILL, power loss) left in folder: partial files and staged series folders are
    removed, a series moved aside during an interrupted swap is put back (or removed when its name is taken again);
    returns one note each."""
    notes = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return notes
    for entry in entries:
        match = PARTIAL_PATTERN.match(entry.name) or ASIDE_PATTERN.match(entry.name)
        if not match or entry.is_symlink() or int(match["pid"]) == os.getpid():
            continue
        if _alive(int(match["pid"])):
            notes.append(f"{entry} is being written by a running sr4zct (process {match['pid']}); left alone")
            continue
        try:
            notes.append(_clean_stale(entry, folder / match["name"], ASIDE_PATTERN.match(entry.name) is not None))
        except OSError as error:
            notes.append(f"{entry} was left by an interrupted sr4zct run and cannot be removed ({error.strerror}); "
                         "delete it by hand")
    return notes


def _clean_stale(entry: Path, target: Path, aside: bool) -> str:
    """Remove one stale partial file or staging folder, or restore an old series moved aside; the note to show."""
    if aside and not target.exists():
        os.rename(entry, target)
        return f"restored {target} from {entry}, moved aside by an interrupted sr4zct run"
    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return f"removed {entry}, left by an interrupted sr4zct run"


def input_files(source: Path) -> tuple[list[Path], Optional[Path]]:
    """Files an input consists of (never to be written), and the DICOM folder when the input is one."""
    source = Path(source)
    if source.is_dir() or source.name.lower().endswith(".dcm"):
        folder = source if source.is_dir() else source.parent
        return [p for p in folder.iterdir() if p.is_file()], folder.resolve()
    files = [source]
    if source.name.lower().endswith((".nhdr", ".mhd")) and source.is_file():
        from .itk import detached_data_file  # the detached data file is part of the input too

        data = detached_data_file(source)
        files += [data] if data is not None else []
    return files, None


@dataclass
class _Output:
    option: str  # how the user named it: "-o", "--save-model", "--report"
    path: Path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def input_overlap(output: str | os.PathLike, source: str | os.PathLike) -> Optional[str]:
    """How an output path meets an input: it "is" the input, lies "inside" it (a folder), "holds" it, or None."""
    output, source = Path(output), Path(source)
    if _same_file(output, source):
        return "is"
    target, origin = output.resolve(), source.resolve()
    if origin in target.parents:
        return "inside"
    return "holds" if target in origin.parents else None


class OutputPlan:
    """The outputs of one run, all checked before any work (see the module docstring)."""

    def __init__(self, source: Optional[Path], overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self.outputs: list[_Output] = []
        self.created_folders: list[Path] = []
        self.protected, self.dicom_folder = input_files(source) if source is not None else ([], None)
        self.notes: list[str] = []

    def add(self, option: str, path: str | os.PathLike, suffixes: Optional[Iterable[str]] = None) -> Path:
        """Check one output path now; returns it."""
        path = Path(path)
        if suffixes is not None and not path.name.lower().endswith(tuple(suffixes)):
            folder = " (or pass --format dicom for a DICOM series folder)" if option == "-o" else ""
            raise InputError(f"{option} {path.name}: unknown type; end the name with one of {', '.join(suffixes)}"
                             f"{folder}")
        if path.is_dir():
            raise InputError(f"{option} {path} is a folder; give a file name (--overwrite never replaces a folder)")
        for source in self.protected:
            if input_overlap(path, source) == "is":
                raise InputError(f"{option} {path} would overwrite the input; choose another path")
        if self.dicom_folder is not None and input_overlap(path, self.dicom_folder) == "inside":
            raise InputError(f"{option} {path} is inside the input DICOM folder {self.dicom_folder}; "
                             "write outputs elsewhere so the series stays as it was")
        for other in self.outputs:
            if other.path.resolve() in path.resolve().parents:
                raise InputError(f"{option} {path} is inside the {other.option} output folder of this run; give each "
                                 "output its own path")
            if _same_file(path, other.path):
                raise InputError(f"{option} {path} is also the {other.option} output of this run; give each output "
                                 "its own path")
        if path.exists() and not self.overwrite:
            raise InputError(f"{option} {path} exists; choose another path or pass --overwrite")
        self._check_folder(option, path)
        self.outputs.append(_Output(option, path))
        return path

    def protect_folder(self, option: str, folder: str | os.PathLike) -> Path:
        """Record an output folder checked elsewhere (a DICOM series): no other output may be it or lie inside it."""
        folder = Path(folder)
        self.outputs.append(_Output(option, folder))
        self.notes.extend(remove_stale_partials(folder.resolve().parent))  # staging folders of dead runs
        return folder

    def add_folder(self, option: str, folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
        """Check a folder of outputs (--report): a folder or creatable there, and each file in it."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{option} {folder} is a file; give a folder (it is created if needed)")
        if not folder.exists():
            self._check_folder(option, folder)
        return [self.add(option, folder / name) for name in names]

    def _check_folder(self, option: str, path: Path) -> None:
        parent = path.resolve().parent
        if not parent.exists():
            if option == "--report" and parent.parent.is_dir():
                return self._check_folder(option, parent)  # the report folder itself is created at the end
            raise InputError(f"{option}: folder {parent} does not exist; create it first")
        if not parent.is_dir():
            raise InputError(f"{option}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{option}: folder {parent} is not writable; choose another path")
        limit = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
        if len(os.fsencode(partial_name(path, 10**6).name)) > limit:
            raise InputError(f"{option} {path.name}: the name is too long for this file system "
                             f"(at most {limit - len(partial_name(path, 10**6).name) + len(path.name)} characters); "
                             "choose a shorter name")
        self.notes.extend(remove_stale_partials(parent))

    def check_space(self, sizes: dict[str, int]) -> None:
        """Refuse when a folder lacks the free space for the outputs' estimated sizes (bytes per option)."""
        needed: dict[int, tuple[Path, int]] = {}
        for output in self.outputs:
            folder = _existing_ancestor(output.path)
            device = folder.stat().st_dev
            share = sizes.get(output.option, 0) // max(1, sum(o.option == output.option for o in self.outputs))
            needed[device] = (folder, needed.get(device, (folder, 0))[1] + share)
        for folder, size in needed.values():
            free = shutil.disk_usage(folder).free
            if size + SPACE_MARGIN_BYTES > free:
                raise ResourceError(f"the outputs need about {size / 2**20:.0f} MiB but {folder} has "
                                    f"{free / 2**20:.0f} MiB free; free disk space or write elsewhere")


def _existing_ancestor(path: Path) -> Path:
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    return folder


def _fsync(path: Path | str, directory: bool = False) -> None:
    descriptor = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(descriptor)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(descriptor)


class Publication:
    """Stages verified temporary files (and series folders) for a checked plan, then publishes them all or none."""

    def __init__(self, plan: OutputPlan) -> None:
        self.plan = plan
        self.staged: list[tuple[Path, Path]] = []  # (temporary file or staging folder, target)

    def stage(self, target: Path, write: Callable[[str], None], verify: Callable[[str], None]) -> None:
        """Write target's temporary file, fsync it and verify it; on any failure remove it and raise `error:`."""
        check_cancelled()  # a cancel swallowed on the way: stage nothing more
        target = Path(target)
        temporary = partial_name(target, next(_counter))
        self._created(target.parent)
        self.staged.append((temporary, target))  # before it exists: a cancel from here on removes it
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._write(temporary, target, write, verify)

    def stage_folder(self, target: Path, write: Callable[[str], None], verify: Callable[[str], None]) -> None:
        """The same for a folder of files (a DICOM series): a staging folder `.NAME.sr4zct-PID-N.partial` beside it."""
        check_cancelled()
        target = Path(target)
        staging = target.with_name(f".{target.name}.sr4zct-{os.getpid()}-{next(_counter)}.partial")
        self._created(target.parent)
        self.staged.append((staging, target))
        os.mkdir(staging, 0o700)
        self._write(staging, target, write, verify)

    def _created(self, folder: Path) -> None:
        if not folder.exists():
            folder.mkdir(parents=True)
            self.plan.created_folders.append(folder)

    def _write(self, temporary: Path, target: Path, write: Callable[[str], None], verify: Callable[[str], None]) -> None:
        try:
            write(str(temporary))
            for path in sorted(temporary.iterdir()) if temporary.is_dir() else [temporary]:
                _fsync(path)
            verify(str(temporary))
        except (ValueError, OSError, RuntimeError, EOFError) as error:
            check_cancelled()  # a cancel that a library turned into one of these (pydicom: OSError) stays a cancel
            free = shutil.disk_usage(target.parent).free / 2**20
            reason = (error.strerror if isinstance(error, OSError) and error.strerror
                      else str(error).strip().splitlines()[-1].split("; ")[0])  # the finding, not the input's fix
            raise ResourceError(f"writing {target} failed ({reason}); {free:.0f} MiB free in {target.parent}: free "
                                "disk space or write elsewhere. No output was published") from None

    def publish(self) -> list[Path]:
        """Move every staged file and folder into place (no clobber unless overwrite); all or, on failure, none.

        With overwrite an old series folder is moved aside and removed only once everything is in place; a failure
        puts it back. A cancel (SIGTERM, SIGHUP, Ctrl-C) waits until the outputs are all published or all rolled back.
        """
        check_cancelled()  # a cancel swallowed while staging: publish nothing
        mask = os.umask(0)
        os.umask(mask)
        done: list[tuple[Path, Optional[Path], bool]] = []  # (target, the old one moved aside, target was new)
        with _cancel_deferred() as cancel:
            try:
                for temporary, target in sorted(self.staged, key=lambda item: not item[0].is_dir()):  # folders first
                    os.chmod(temporary, (0o777 if temporary.is_dir() else 0o666) & ~mask)
                    new = not target.exists()
                    done.append((target, self._place(temporary, target), new))
                    _fsync(target.parent, directory=True)
            except BaseException:
                self._roll_back(done)
                self.discard()
                raise
            for _, aside, _ in done:
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True) if aside.is_dir() else aside.unlink(missing_ok=True)
            self.staged = []
        if cancel.signalled:
            raise Cancelled("terminated", kept=f"every output was already published ({', '.join(str(t) for t, *_ in done)}); "
                            "nothing else was done")
        return [target for target, *_ in done]

    def _place(self, temporary: Path, target: Path) -> Optional[Path]:
        """Give temporary its target's name; returns the old file or folder kept aside (to remove or put back)."""
        if temporary.is_dir():
            return _place_folder(temporary, target, self.plan.overwrite)
        if not self.plan.overwrite:
            _link_exclusive(temporary, target)
            temporary.unlink()
            return None
        if target.is_dir() or any(_same_file(target, p) for p in self.plan.protected if target.exists()):
            raise InputError(f"{target} became a folder or an input while this run worked; not replaced")
        aside = _aside_name(target) if target.exists() else None
        try:
            os.link(target, aside) if aside is not None else None
        except OSError:  # no hard links here: the old file cannot be kept for a roll-back
            aside = None
        os.replace(temporary, target)
        return aside

    def _roll_back(self, done: list[tuple[Path, Optional[Path], bool]]) -> None:
        """Undo what publish placed: new outputs removed, old files and series put back."""
        for target, aside, new in reversed(done):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif new or aside is not None:
                target.unlink(missing_ok=True)
            if aside is not None:
                os.rename(aside, target)

    def discard(self) -> None:
        """Remove every temporary file and staging folder (and folders this run created, when empty)."""
        for temporary, _ in self.staged:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self.staged = []
        for folder in reversed(self.plan.created_folders):
            try:
                folder.rmdir()
            except OSError:
                pass


def _place_folder(staging: Path, target: Path, overwrite: bool) -> Optional[Path]:
    """Rename a staging folder to target: an empty target is replaced; an existing series only with overwrite, moved
    aside first (returned)."""
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
        return None
    if not overwrite or not target.is_dir() or target.is_symlink():
        raise InputError(f"output folder {target} appeared during the run; it was left as it is, choose another "
                         "folder or pass --overwrite")
    aside = _aside_name(target)
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


def _aside_name(target: Path) -> Path:
    """Where an old output waits while its replacement is published (ASIDE_PATTERN: put back if a run dies)."""
    return target.with_name(f".{target.name}.sr4zct-{os.getpid()}-{next(_counter)}.old")


class _CancelDeferral:
    """Signals that arrived while outputs were being published."""

    def __init__(self) -> None:
        self.signalled: Optional[int] = None


@contextlib.contextmanager
def _cancel_deferred():
    """Hold SIGTERM, SIGHUP and SIGINT (in the main thread) until the block ends: publish or roll back, never half."""
    import signal
    import threading

    state = _CancelDeferral()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            number = getattr(signal, name, None)
            if number is not None:
                previous[number] = signal.signal(number, lambda signum, frame: setattr(state, "signalled", signum))
    try:
        yield state
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _link_exclusive(temporary: Path, target: Path) -> None:
    """Give temporary the name target only if nothing has that name (hard link; O_EXCL claim where links fail)."""
    try:
        os.link(temporary, target)
        return
    except FileExistsError:
        raise InputError(f"{target} appeared while this run worked (another run?); it was left as it is. "
                         "Choose another path or pass --overwrite") from None
    except OSError:
        pass  # no hard links on this file system
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise InputError(f"{target} appeared while this run worked (another run?); it was left as it is. "
                         "Choose another path or pass --overwrite") from None
    os.replace(temporary, target)


def write_alone(path: str | os.PathLike, overwrite: bool, stage: Callable[["Publication", Path], None],
                folder_names: Optional[Iterable[str]] = None) -> list[Path]:
    """Check, stage, verify and publish one artefact (or one folder of them, given folder_names) outside a run."""
    plan = OutputPlan(None, overwrite)
    if folder_names is None:
        plan.add("output", path)
    else:
        plan.add_folder("--report", path, folder_names)
    return write_planned(plan, lambda publication: stage(publication, Path(path)))


def write_planned(plan: OutputPlan, stage: Callable[["Publication"], None]) -> list[Path]:
    """Stage a checked plan's artefacts with `stage`, then publish them all, or on any failure none."""
    publication = Publication(plan)
    try:
        stage(publication)
        return publication.publish()
    except BaseException:
        publication.discard()
        raise


def stage_text(publication: Publication, target: Path, text: str) -> None:
    """Stage one small text file (JSON, CSV) as UTF-8, verified by reading it back equal."""
    data = text.encode("utf-8")

    def verify(name: str) -> None:
        if Path(name).read_bytes() != data:
            raise ValueError("the file read back differs from what was written")

    publication.stage(target, lambda name: Path(name).write_bytes(data), verify)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write, fsync, verify (read back equal) and publish one small text file (JSON, CSV) outside a run."""
    return write_alone(path, overwrite, lambda publication, target: stage_text(publication, target, text))[0]


LOCK_SETTLE_S = 10.0  # a lock file younger than this without a process id is being taken


def _age_s(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


class FolderLock:
    """An O_EXCL lock file holding this process id: one writer per folder; a dead holder's lock is taken over."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.notes = Path(path), what, []

    def __enter__(self) -> "FolderLock":
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None and _age_s(self.path) < LOCK_SETTLE_S:
                    holder = -1  # just created: its holder is still writing its process id
                if holder is not None and holder != os.getpid() and (holder < 0 or _alive(holder)):
                    raise InputError(f"another {self.what} (process {holder}) is writing to {self.path.parent} (lock "
                                     f"{self.path.name}); wait for it to finish or choose another folder") from None
                self.path.unlink(missing_ok=True)  # left by a killed run
                self.notes.append(f"removed the lock {self.path} of an interrupted run (process {holder})")
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            return self
        raise InputError(f"cannot take the lock {self.path}; another run keeps taking it: wait and try again")

    def _holder(self) -> Optional[int]:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc) -> None:
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)
