"""Devices: where arrays live. The CPU is always present; GPUs come with the CUDA back end."""
from __future__ import annotations


class Device:
    """A place arrays live: ``platform`` is 'cpu' or 'gpu', ``id`` counts from 0."""

    __slots__ = ("platform", "id")

    def __init__(self, platform: str, id: int = 0):
        self.platform = platform
        self.id = id

    def __repr__(self):
        return f"{'CpuDevice' if self.platform == 'cpu' else 'CudaDevice'}(id={self.id})"

    def __eq__(self, other):
        return isinstance(other, Device) and (self.platform, self.id) == (other.platform, other.id)

    def __hash__(self):
        return hash((self.platform, self.id))


_CPU = Device("cpu", 0)


def cpu_device() -> Device:
    return _CPU
