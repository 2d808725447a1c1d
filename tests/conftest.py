"""Test-wide settings.

One torch thread: the test models are tiny, so extra threads only add synchronisation, and on a
busy 2-core machine every multi-threaded matmul waits for a core held by another process (we
measured single decode steps slowing from ~0.3 ms to ~12 ms). Subprocesses inherit the variable.
"""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def image_tokenizer(tmp_path_factory):
    """The pipeline tests' tiny FSQ image tokenizer (48 codes on a 4x4 grid) saved once as a folder."""
    from tiny_models import save_tiny_image_tokenizer

    return save_tiny_image_tokenizer(tmp_path_factory.mktemp("vq"))
