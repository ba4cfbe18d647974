"""Small file helpers: atomic writes, JSONL, hashing.

Every artefact sftmix writes goes through ``atomic_write`` so that a kill at any moment leaves
either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sftmix.errors import SftmixError


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists (a temp file's writer, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of ``path`` left by writers that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        if parts and parts[0].isdigit() and not pid_alive(int(parts[0])):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path``; rename it over ``path`` only on success.

    The temporary name carries the writer's pid, so that the leftovers of a writer killed with
    SIGKILL (which no ``except`` can clean up) are removed by the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def building(folder: str | os.PathLike, marker: str) -> Iterator[Path | None]:
    """Build a cache folder once, however many processes ask for it at the same time (a study's
    parallel workers, evaluations beside training). Under an exclusive ``flock`` on a lock file
    beside ``folder``: yields None where ``folder`` is complete (it holds ``marker``), else an empty
    temporary folder to fill, renamed to ``folder`` when the block ends without an error. A
    waiting process then finds the folder complete and reuses it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if (folder / marker).exists():
            yield None
            return
        tmp = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)  # a builder killed midway; under the lock, nobody writes it now
        tmp.mkdir()
        yield tmp
        shutil.rmtree(folder, ignore_errors=True)  # incomplete: no marker
        os.replace(tmp, folder)


def write_all(files: dict[Path, str | bytes]) -> None:
    """Write several files all or none: every target is checked and staged beside itself first
    (a folder in the way, an unwritable place or a full disk fails before any target changes),
    then each staged file is renamed over its target. A command whose outputs belong together
    (a proposal's JSON and its study file, an export's two tables) never leaves one of them new
    and the other old or missing."""
    staged: list[tuple[str, Path]] = []

    def drop_staged() -> None:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    for path, content in files.items():
        path = Path(path)
        try:
            if path.is_dir():
                raise IsADirectoryError(21, "is a folder", str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            drop_staged()
            raise SftmixError(f"{path}: cannot write it ({e.strerror or e}); none of "
                              f"{', '.join(str(p) for p in files)} was written") from None
        except BaseException:
            drop_staged()
            raise
    for tmp, path in staged:
        os.replace(tmp, path)


def json_text(obj: Any) -> str:
    """``obj`` as ``write_json`` writes it."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> str:
    """Write rows as JSONL atomically; return the sha256 of the bytes written."""
    h = hashlib.sha256()
    with atomic_write(path, "wb") as f:
        for row in rows:
            line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
            h.update(line)
            f.write(line)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def sha256_text(text: str) -> str:
    """The sha256 of a text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Short hex hash of a JSON-serialisable value, independent of dict key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return sha256_text(blob)[:n]


def _validate(where: str, text: str, model: type[BaseModel]):
    try:
        return model.model_validate(json.loads(text))
    except ValidationError as e:
        first = e.errors()[0]
        name = model.__name__
        raise SftmixError(f"{where}: not {'an' if name[0] in 'AEIOU' else 'a'} {name} "
                          f"({'.'.join(map(str, first['loc'])) or 'top level'}: {first['msg']})") from None
    except ValueError as e:
        raise SftmixError(f"{where}: not readable JSON ({e})") from None


def _text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; a missing or undecodable file names itself."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SftmixError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise SftmixError(f"{path}: not readable {what} ({e})") from None


def read_record(path: str | Path, model: type[BaseModel]):
    """``path`` read as ``model``; a missing, unreadable or malformed file names itself."""
    return _validate(str(path), _text(path, "JSON"), model)


def read_records(path: str | Path, model: type[BaseModel]) -> list:
    """Each line of the JSONL file ``path`` read as ``model`` (blank lines skipped); a missing or
    unreadable file names itself, a malformed line its file and line number."""
    lines = _text(path, "JSON lines").splitlines()
    return [_validate(f"{path}:{n}", line, model) for n, line in enumerate(lines, 1) if line.strip()]


def read_appended(path: str | Path, model: type[BaseModel]) -> list:
    """The lines of an append-only JSONL file (a cache written a line at a time) read as ``model``.
    A writer killed in the middle of a line leaves it without its newline (every whole line ends
    with one): that fragment is cut off the file first, so that the next line appended starts a
    line of its own instead of being glued to it. A bad whole line is an error, as ``read_records``."""
    _drop_torn_line(Path(path))
    return read_records(path, model)


def _drop_torn_line(path: Path, chunk: int = 1 << 16) -> None:
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if not end:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":  # whole: the usual case, one byte read
            return
        pos = end
        while pos > 0:  # back from the end to the last newline, a chunk at a time
            start = max(0, pos - chunk)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)
