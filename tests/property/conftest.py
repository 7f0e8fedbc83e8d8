"""Hypothesis profiles of the property tests, and the helper folders they import from.

Profiles (loaded here, for this folder's tests only use hypothesis):

- ``ci`` (default): ``FUZZ_CI_EXAMPLES`` examples per test, derandomized (the same examples on every
  run, so a CI failure reproduces locally), no example database, no deadline (shared CI machines).
- ``campaign``: registered and loaded when ``DYCONV_FUZZ_EXAMPLES=N`` (e.g. 10000): N random examples per test; the
  seed is printed by pytest's hypothesis plugin header and a failure prints its reproduce blob.

The tests reuse the layer factory (``tests/export``), the contract graphs (``tests/lower``) and the
emulated kernels (``tests/plugins``); pytest puts only a test's own folder on ``sys.path``.
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parents[1]
for folder in ("export", "lower", "plugins"):
    if str(TESTS / folder) not in sys.path:
        sys.path.append(str(TESTS / folder))

FUZZ_CI_EXAMPLES = 300
# tests/conftest.py seeds torch once per test function (autouse): harmless here, every example seeds its own.
_COMMON = dict(database=None, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=FUZZ_CI_EXAMPLES, derandomize=True, **_COMMON)
if os.environ.get("DYCONV_FUZZ_EXAMPLES"):
    settings.register_profile("campaign", max_examples=int(os.environ["DYCONV_FUZZ_EXAMPLES"]), derandomize=False,
                              **_COMMON)
    settings.load_profile("campaign")
else:
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Examples are tiny: one thread avoids thread start-up and contention on shared CI cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
