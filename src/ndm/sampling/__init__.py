"""Sampling: stateless samplers of one signature, found by name, and the ODE solve."""

from ndm.sampling.samplers import SAMPLERS, SampleResult, get_sampler, time_grid

__all__ = ["SAMPLERS", "SampleResult", "get_sampler", "time_grid"]
