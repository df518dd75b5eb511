"""Throughput benchmarks: the train step and inference, the data path, and a whole epoch.

One module per job, read top-down:

* ``timing``: how long to measure (``Timing``) and how the clock is read on a GPU;
* ``memory``: free host memory, the peak of a measurement, and the estimate that skips a
  configuration that cannot fit before it starts;
* ``step``: the step harness (``StepBench``), ``baseline`` vs ``fastres`` runtimes, records,
  and the sweep over models, modes and batch sizes;
* ``loading``: fastres' loader + device-side augmentation against a torchvision DataLoader;
* ``end_to_end``: a real training epoch against the pure step rate;
* ``opcount``: operators dispatched per training step, a CPU proxy for kernel launches;
* ``output``: machine info, the side-by-side table, JSON/CSV/PNG files.

``fastres bench`` (in ``fastres.cli``), the pytest-benchmark suites in ``benchmarks/`` and
``benchmarks/gpu_check.py`` all use the names exported here.
"""

from ..runtime import is_out_of_memory
from .end_to_end import measure_end_to_end, measure_step_in_loop
from .loading import measure_ffcv_loader, measure_torchvision_loader, time_epochs
from .memory import PeakMemory, available_memory_bytes, estimate_memory_bytes
from .output import (
    CSV_KEYS,
    format_table,
    machine_info,
    pair_rows,
    write_csv,
    write_json,
    write_plot,
)
from .step import (
    CONFIGS,
    DEFAULT_BATCH_SIZES,
    MODEL_NAMES,
    MODES,
    QUICK_BATCH_SIZES,
    QUICK_WIDTH,
    RECORD_KEYS,
    StepBench,
    base_record,
    baseline_runtime,
    fastres_runtime,
    measure_step,
    runtime_for,
    short_result,
    sweep,
)
from .timing import FULL_ENV, FULL_TIMING, QUICK_TIMING, Timing, full_mode, synchronize

__all__ = [
    "CONFIGS",
    "CSV_KEYS",
    "DEFAULT_BATCH_SIZES",
    "FULL_ENV",
    "FULL_TIMING",
    "MODEL_NAMES",
    "MODES",
    "QUICK_BATCH_SIZES",
    "QUICK_TIMING",
    "QUICK_WIDTH",
    "RECORD_KEYS",
    "PeakMemory",
    "StepBench",
    "Timing",
    "available_memory_bytes",
    "base_record",
    "baseline_runtime",
    "estimate_memory_bytes",
    "fastres_runtime",
    "format_table",
    "full_mode",
    "is_out_of_memory",
    "machine_info",
    "measure_end_to_end",
    "measure_ffcv_loader",
    "measure_step",
    "measure_step_in_loop",
    "measure_torchvision_loader",
    "pair_rows",
    "runtime_for",
    "short_result",
    "sweep",
    "synchronize",
    "time_epochs",
    "write_csv",
    "write_json",
    "write_plot",
]
