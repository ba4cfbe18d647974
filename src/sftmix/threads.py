"""How many threads torch's and the BLAS libraries' pools start in a process given some CPUs.

Light on purpose (no torch): a process sets these before torch is imported, in itself or in the
environment of the processes it starts, since the pools read them once, at start."""

from __future__ import annotations

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(cpus: int) -> dict[str, str]:
    """The environment variables that size every thread pool to ``cpus``."""
    return {var: str(cpus) for var in THREAD_VARS}
