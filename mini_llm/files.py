"""Files: find or download a named remote file, check it, cache it; write files atomically.

Where a file comes from, first match wins:
  1. an explicit path (`--data PATH`): used as is;
  2. $MINI_LLM_DATA_DIR/<file name>: a folder of local copies (CI points it at ../shared/data);
  3. the cache, $MINI_LLM_CACHE_DIR or ~/.cache/mini_llm: downloaded earlier, sha256 checked;
  4. a download from the canonical URL, checked against its sha256 before it enters the cache.
"""

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


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
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if the rename did not happen


def fetch(remote, path=None):
    """Return a local path to `remote`'s file, downloading it into the cache if need be."""
    if path is not None:
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
