"""Suite-wide settings.

Every model in the tests is tiny: at that size torch's intra-op threads cost more in
synchronisation than they save, and on a shared 2-core CI machine they made single
steps up to 10x slower. One thread also keeps results independent of the core count.
"""

import pytest
import torch
from tiny_text import make_tiny_t5

from pixcade.text.encoders import load_text_encoder

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory):
    """Remembered weight digests go to a per-session folder, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()


# A tiny random T5 saved to disk once per module, and the encoder loaded from it through
# the same call a user makes (the text-encoder and embedding-cache tests share them).
@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")


@pytest.fixture(scope="module")
def t5(t5_dir):
    return load_text_encoder(str(t5_dir), max_length=32)
