"""Train step and inference, baseline vs fastres, for every model and batch size.

Each test is one (model, mode, batch size, config); baseline and fastres of the same
setting run back to back in one session, same threads, same in-memory input. The first
step (compile) and the warm-up run before pytest-benchmark's timed rounds; one round is
``steps_per_repeat`` synchronised steps. Groups are per model and mode, so each group lists
the batch-size sweep; ``extra_info`` holds images/s, compile time and peak memory.

Select with -k, e.g. ``-k "resnet18 and train and bs128"``.
"""

from __future__ import annotations

import pytest

from fastres import bench

BATCH_SIZES = bench.DEFAULT_BATCH_SIZES if bench.full_mode() else (8,)


@pytest.mark.bench
@pytest.mark.parametrize("config", bench.CONFIGS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"bs{b:03d}")
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("model", bench.MODEL_NAMES)
def test_step(benchmark, settings, device, results, model, mode, batch_size, config):
    benchmark.group = f"{model} {mode}"

    def repeat(run, steps, repeats):
        benchmark.pedantic(run, args=(steps,), rounds=repeats, iterations=1, warmup_rounds=0)

    record = bench.measure_step(
        model,
        batch_size,
        mode,
        config,
        device=device,
        width=settings.width,
        timing=settings.timing,
        repeat=repeat,
    )
    results["step"].append(record)
    if record["status"] != "ok":
        benchmark.skipped = True  # not measured on purpose: no "fixture not used" warning
        pytest.skip(record["reason"])
    benchmark.extra_info.update(
        {
            k: record[k]
            for k in (
                "images_per_s",
                "step_ms",
                "steps_per_repeat",
                "first_step_s",
                "compile_s",
                "peak_memory_mb",
                "precision",
                "channels_last",
                "compile",
                "width",
                "threads",
                "config",
                "batch_size",
            )
        }
    )
