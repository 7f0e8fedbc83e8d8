"""Shared fixtures: every test starts from the same random state."""

import dyconv_deploy.cli  # noqa: F401  (before numpy: no huge pages for numpy arrays, as on the command line)
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
