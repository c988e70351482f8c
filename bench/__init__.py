"""Benchmarks (python -m bench). The judges of generated images they use live in evals/.

Run as an entry point (`python -m bench`, `python -m bench.<part>`), this package is imported before torch,
and it asks OpenMP to let idle threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the caller chose a policy.
On a shared 2-core machine the default spinning makes torch's 2 threads wait on each other's time slices: a
sampling run measured 0.3 s with PASSIVE and 0.7 to 28 s without it, on the same busy machine
(docs/PERFORMANCE.md, "Threads"). Imported after torch (as tests do), it changes nothing; BENCH_OMP_DEFAULT=1
keeps OpenMP's own default.
"""
import os
import sys

if "torch" not in sys.modules and not os.environ.get("BENCH_OMP_DEFAULT"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
