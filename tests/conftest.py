import os
import time
import urllib.error
import urllib.request

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter on CPU tensors; the variable must be set
# before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test: seeded, offline, its own cache folder, no data folder or kernel choice from
    outside."""
    torch.manual_seed(0)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("MINI_LLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINI_LLM_DATA_DIR", raising=False)
    monkeypatch.delenv("MINI_LLM_KERNELS", raising=False)
    from mini_llm import ops

    ops.set_kernels("torch")
    yield
    # The GPU grid runs in many processes on one GPU (bench/gpu_run.sh): none may keep the memory
    # of its big tests cached for itself.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture
def corpus(tmp_path):
    """A small text file: a few kB of Shakespeare-like lines."""
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS * 30)
    return path


# -- CUDA extension (the `cuda_ext` fixture, shared by the CUDA tests) --
@pytest.fixture(scope="session")
def cuda_ext(tmp_path_factory):
    """The CUDA extension module (mini_llm.ops.cuda.load()), built at most once per test session:
    into $MINI_LLM_BUILD_DIR when set (export it to reuse a build across sessions), else into a
    session tmp dir. Skips the test where it can be neither imported nor built (no nvcc); a
    compile error fails it."""
    from mini_llm.ops import cuda

    reason = cuda.unavailable_reason()
    if reason:
        pytest.skip(reason)
    wait_for_background_build()
    os.environ.setdefault("MINI_LLM_BUILD_DIR", str(tmp_path_factory.mktemp("cuda_build")))
    return cuda.load()


def wait_for_background_build(limit_s=600):
    """bench/gpu_run.sh builds the extension in the background while the tests start, and writes
    its exit status into $MINI_LLM_CUDA_BUILD_STATUS: wait for it, and fail at once if that
    build failed, rather than have every test process compile the binding again."""
    path = os.environ.get("MINI_LLM_CUDA_BUILD_STATUS")
    if not path:
        return
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(1)
    status = open(path).read().strip() if os.path.exists(path) else "no status"
    if status != "0":
        pytest.fail(f"the background build of the CUDA extension failed ({status}): see its log", pytrace=False)
