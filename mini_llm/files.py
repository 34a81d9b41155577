"""Files: find or download a named remote file, check it, cache it; write outputs safely.

Where a file comes from, first match wins:
  1. an explicit path (`--data PATH`): used as is;
  2. $MINI_LLM_DATA_DIR/<file name>: a folder of local copies (CI points it at ../shared/data);
  3. the cache, $MINI_LLM_CACHE_DIR or ~/.cache/mini_llm: downloaded earlier, sha256 checked;
  4. a download from the canonical URL, checked against its sha256 before it enters the cache.

Every command writes its outputs the one way below: checked before any work starts
(check_output_file, check_output_folder), written atomically (atomic_write_bytes), never over a
device or another non-regular file, never over an existing file unless the command was told to
(--force), and any OS error (permission, full disk, read-only, not a folder) is one OutputError
naming the path. lock_folder keeps a second writer out of a run folder.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, OutputError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


DATA_DIR_VAR = "MINI_LLM_DATA_DIR"
CACHE_DIR_VAR = "MINI_LLM_CACHE_DIR"
HOW_TO_POINT = f"pass --data PATH, or set {DATA_DIR_VAR} to a folder holding"


def cache_dir():
    return Path(os.environ.get(CACHE_DIR_VAR) or Path.home() / ".cache" / "mini_llm")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path, data):
    """Write to a temporary file beside `path`, then rename: readers never see half a file,
    and a write that fails (a full disk) leaves the previous file as it was."""
    path = Path(path)
    refuse_non_regular(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_all(f, data)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # only left if the rename did not happen


def write_all(f, data):
    f.write(data)
    f.flush()
    os.fsync(f.fileno())  # on disk before the rename makes it the file


def refuse_non_regular(path):
    """A rename would replace a device node (/dev/full), a pipe or a folder with a plain file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputError(f"{path} is {kind}; refusing to replace it")


def remove_stale_temps(path):
    """Delete the temporary files (.NAME.tmp<PID>) of earlier writers of `path` that were
    killed mid-write: their process is gone, so nothing will ever rename them into place."""
    prefix = f".{path.name}.tmp"
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f"{glob_escape(prefix)}*"):
            pid = tmp.name[len(prefix):]
            if pid.isdigit() and not pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


def glob_escape(text):
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def check_output_file(path, force=False, inputs=()):
    """Before a command starts working: can `path` be written? Refuses a non-regular file, an
    existing file without `force`, any of the command's `inputs` (even with force), a folder
    that does not exist, and a folder where no file can be created. Returns the Path."""
    path = Path(path)
    refuse_non_regular(path)
    if path.exists():
        if any(Path(p).exists() and path.samefile(p) for p in inputs):
            raise OutputError(f"{path} is this command's input; write the output elsewhere")
        if not force:
            raise OutputError(f"{path} exists; pass --force to overwrite it, or choose another path")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: its folder {what} ({path.parent})")
    probe(path.parent, path)
    return path


def check_output_folder(folder):
    """Before a command starts working: can `folder` (created later if missing) be written?"""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise OutputError(f"cannot write into {folder}: {existing} is not a folder")
    probe(existing, folder)
    return folder


def probe(folder, named=None):
    """Create and delete a file in `folder`: what an access() check misses (/proc, a
    read-only mount, root's writes) shows up here, before any work."""
    tmp = Path(folder) / f".probe.tmp{os.getpid()}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        tmp.unlink()
    except OSError as e:
        raise OutputError(f"cannot write {named or folder}: {e.strerror}") from None


@contextlib.contextmanager
def lock_folder(folder):
    """Hold an exclusive lock on `folder` (created if missing) while the block runs: a second
    process that asks for it gets an OutputError at once. The kernel releases the lock when the
    process ends, however it ends, so a killed run leaves no stale lock. The file .lock stays:
    deleting it would let two writers lock two different files."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {e.strerror}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"cannot lock {folder}: {e.strerror}") from None
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise OutputError(f"{folder} is in use by another run ({holder}); wait for it to "
                              "end or choose another --out") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(remote, path=None):
    """Return a local path to `remote`'s file, downloading it into the cache if need be."""
    if path is not None:
        if Path(path).is_dir():
            raise DataError(f"data file {path} is a folder; give a text file")
        if not Path(path).is_file():
            raise DataError(f"data file {path} does not exist")
        return Path(path)
    if os.environ.get(DATA_DIR_VAR):
        local = Path(os.environ[DATA_DIR_VAR]) / remote.name
        if not local.is_file():
            raise DataError(f"{DATA_DIR_VAR}={os.environ[DATA_DIR_VAR]} has no {remote.name}")
        return local
    cached = cache_dir() / remote.name
    if cached.is_file() and sha256_of(cached) == remote.sha256:
        return cached
    try:
        with urllib.request.urlopen(remote.url, timeout=30) as response:
            payload = response.read()
    except OSError as e:
        raise DataError(
            f"could not download {remote.name} from {remote.url} ({getattr(e, 'reason', e)}); "
            f"{HOW_TO_POINT} {remote.name}"
        ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != remote.sha256:
        raise DataError(f"{remote.url} sent a file with sha256 {digest}, expected {remote.sha256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, payload)
    return cached
