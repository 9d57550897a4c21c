"""Benchmarks of the appliance, side by side with raw Podman and nginx in one run.

`python -m bench` (or `make bench`) runs every benchmark; see `bench.__main__`.
Every number is reported beside its baseline measured in the same run, in
alternating order, because the machine is shared and noisy.
"""
