"""Shared test configuration: Hypothesis profiles chosen by an environment variable.

    HYPOTHESIS_PROFILE=dev        ~30 examples a property: the default, for quick local runs
    HYPOTHESIS_PROFILE=ci         ~100 examples, derandomized so every CI run draws the same examples
    HYPOTHESIS_PROFILE=thorough   100_000 examples: a long soak of the bound checks

Without HYPOTHESIS_PROFILE the profile is `ci` when the environment sets CI, else `dev`.
A test that fixes its own `max_examples` (e.g. an expensive reference route) keeps it.
Helpers live beside this file as modules of the `tests` package: `from tests.strategies import ...`.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# deadline=None everywhere: the first example of a theory test fills per-process caches (SymPy
# derivation, lambdify, torch's first autograd call: seconds); a deadline would flag the cache fill.
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=100_000, deadline=None)

PROFILES = ("dev", "ci", "thorough")


def _selected_profile() -> str:
    requested = os.environ.get("HYPOTHESIS_PROFILE")
    if requested is None:
        return "ci" if os.environ.get("CI") else "dev"
    if requested not in PROFILES:
        raise pytest.UsageError(
            f"HYPOTHESIS_PROFILE must be one of {', '.join(PROFILES)}; got {requested!r}. "
            "Unset it for the default (dev, or ci when CI is set)."
        )
    return requested


PROFILE = _selected_profile()
settings.load_profile(PROFILE)


def pytest_report_header(config):
    active = settings.default
    return (f"hypothesis profile: {PROFILE} (max_examples={active.max_examples}, "
            f"derandomize={active.derandomize}; set HYPOTHESIS_PROFILE to one of {', '.join(PROFILES)})")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs tiny tensors: intra-op threads only contend on a shared CPU (10x slower
    measured), so use one. Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
