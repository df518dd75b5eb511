"""The prepared GPU calls of the captured step (benchmarks/gpu_step.sh) in their CPU mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _call(out, *args):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_step.sh"), str(out), *args, "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_step_call_measures_every_lever_taking_turns(tmp_path):
    res = _call(tmp_path, "step", "--rounds", "3")
    assert res.returncode == 0, res.stdout[-3000:]
    doc = json.loads((tmp_path / "gpu_step.json").read_text())
    assert doc["complete"] and doc["errors"] == [] and doc["mode"] == "tiny"
    levers = [r["lever"] for r in doc["records"]]
    assert levers == doc["settings"]["levers"]
    assert {
        "eager",
        "fused",
        "graph",
        "compile",
        "compile_graph",
        "compile_reduce_overhead",
        "muon",
        "muon_graph",
        "muon_compile_graph",
        "muon_ns_compiled",
        "muon_ns_padded",
    } <= set(levers)
    for r in doc["records"]:
        assert r["status"] == "ok" and len(r["round_images_per_s"]) == 3, r
        assert r["images_per_s"] > 0 and r["first_step_s"] is not None
    defined = doc["settings"]["levers_defined"]
    assert defined["muon_ns_padded"]["newton_schulz"] == "padded"
    assert levers[-2:] == ["muon_ns_compiled", "muon_ns_padded"], "after the levers before them"
    graph = next(r for r in doc["records"] if r["lever"] == "muon_graph")
    assert graph["graph"].startswith("0 replayed")  # the CPU runs the step uncaptured
    assert (tmp_path / "gpu_step_step.log").read_text().strip().endswith("not measurements)")


def test_epoch_call_trains_fast_with_the_option_off_and_on(synthetic_source, tmp_path):
    res = _call(tmp_path, "epoch", "--cifar", str(synthetic_source), "--seeds", "0")
    assert res.returncode == 0, res.stdout[-3000:]
    doc = json.loads((tmp_path / "gpu_epoch.json").read_text())
    assert doc["complete"] and doc["errors"] == []
    runs = doc["records"]
    assert [(r["seed"], r["cuda_graph"]) for r in runs] == [(0, "off"), (0, "on")]
    for r in runs:
        assert r["status"] == "completed" and r["epochs"] == 2 and len(r["epoch_images_per_s"]) == 2
    config = json.loads((tmp_path / "fast-s0-graph-on" / "config.json").read_text())
    assert config["cuda_graph"] == "on" and config["preset"] == "fast"
    assert runs[0]["cuda_graph_steps"] is None
    assert (
        runs[1]["cuda_graph_steps"] == "0 replayed from 0 CUDA graph(s), 20 eager"
    )  # the CPU: uncaptured


def test_calls_without_their_arguments_show_usage():
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_step.sh"), "/tmp/x"], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.startswith(
        "usage: bash benchmarks/gpu_step.sh OUTDIR step|epoch"
    )
