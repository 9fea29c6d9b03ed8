"""One thread per library, set before any of them is imported (the targets in the issues were
measured that way on a 2-core machine)."""
import os

SETTINGS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    # functrax follows numpy's dtypes (float64 default): compare with JAX in x64 mode, where
    # float64 workloads (W3) really run in float64. float32 workloads pass float32 explicitly.
    "JAX_ENABLE_X64": "1",
}


def pin_one_thread():
    for k, v in SETTINGS.items():
        os.environ.setdefault(k, v)


def pin_torch():
    try:
        import torch
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    except Exception:
        pass
