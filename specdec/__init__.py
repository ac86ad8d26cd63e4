"""specdec: lossless, batched speculative decoding for Hugging Face causal LMs on a zero-copy KV arena."""
from importlib.metadata import version as _version

from packaging.version import Version as _Version

# The oldest transformers the tests have run on (keep equal to the floor in pyproject.toml). Older 5.x
# releases import fine but break the arena (no `cache=` argument, abstract cache layers, a silent fallback
# to transformers' own cache), so refuse them here, before any model work, with the command that fixes it.
TRANSFORMERS_FLOOR = "5.24.0"
if _Version(_version("transformers")) < _Version(TRANSFORMERS_FLOOR):
    raise ImportError(f"specdec needs transformers>={TRANSFORMERS_FLOOR}, found {_version('transformers')}: "
                      f'run  pip install -U "transformers>={TRANSFORMERS_FLOOR}"  (on Colab, then restart the session)')

from .engine import Result, generate  # noqa: E402  (after the version check: it imports transformers)

__all__ = ["generate", "Result"]
__version__ = "0.1.0"
