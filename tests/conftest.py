"""Shared test configuration: bounded hypothesis profiles, small-model helpers."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# CI runs on 2 cores: keep property tests bounded and deterministic.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.manual_seed(0)
