"""crosslmm: the command-line tool over the ``models`` library."""

import os

# torch's OpenMP threads spin while they wait for work. On this project's 2-core machine with one
# core busy elsewhere, tiny-model training ran 3.9x faster with OMP_WAIT_POLICY=PASSIVE (15.2 vs 3.9
# samples/s; idle: 1.07-1.17x; benchmarks/omp_wait_policy.py). It only takes effect before torch
# is imported, which is why it is here; a value in the user's environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# OpenCV logs to stderr itself ("[ WARN:0@0.1] ... imread_(...): can't open/read file") before
# returning the None that crosslmm turns into its own one-line error; read at OpenCV's import.
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
