"""The benchmark scripts' logic, at sizes that run in seconds (no timings are checked)."""
import json

import pytest
import torch

from bench import gpu
from bench.__main__ import BEGIN, END, targets_table, write_doc
from bench.common import Section, Table, count_flops, interleaved
from bench.training import DiffusersAdapter, diffusers_twin, forward_flops, training_batch


def test_gpu_script_runs_on_cpu_at_tiny_size(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    rc = gpu.main(["--device", "cpu", "--preset", "tiny", "--res", "8", "--context-dim", "16", "--sample-batch", "1",
                   "--train-batch", "2", "--quick", "--mm", "64", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    for part in ("sample", "train"):
        assert r[part]["images_per_s"] > 0 and r[part]["gflops"] > 0 and r[part]["peak_mb"] > 0
    assert "| sampling" in capsys.readouterr().out


def test_gpu_script_without_cuda_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert gpu.run().skipped


def test_diffusers_twin_does_the_same_work():
    from bench.common import build_unet
    ours = build_unet("tiny")
    twin = DiffusersAdapter(diffusers_twin(ours))
    data = training_batch(2, res=16)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in twin.parameters())
    assert forward_flops(ours, data) == forward_flops(twin, data)


def test_cpu_attention_flops_are_counted():
    q = k = v = torch.randn(1, 2, 16, 8)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 1 * 2 * 16 * 16 * 8)  # QK^T and the weighted sum of V


def test_interleaved_times_every_variant():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert sorted(calls) == ["a"] * 4 + ["b"] * 4 and set(t) == {"a", "b"} and len(t["a"].samples) == 3


def test_report_keeps_hand_written_text(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# Performance\n\nnotes before\n\n{BEGIN}\nold numbers\n{END}\n\nnotes after\n")
    section = Section("x", "Part X", "python -m bench.x", tables=[Table("t", ["a"], [["1"]])],
                      summary={"training_vs_diffusers_bf16": 1.5})
    write_doc(doc, f"{BEGIN}\n{section.markdown()}\n{END}")
    text = doc.read_text()
    assert "notes before" in text and "notes after" in text and "old numbers" not in text and "Part X" in text
    assert targets_table([section]).rows == [["training vs diffusers, bf16", ">= 1.2x", "1.50x", "yes"]]


def test_quality_reuse_judges_the_trained_model_again_without_training(tmp_path):
    from bench import quality
    settings = dict(steps=2, n=4, datasets=("shapes",), root=tmp_path,
                    overrides={"batch_size": 4, "cache_dir": str(tmp_path / "cache")})
    first = quality.run(**settings)
    [checkpoint] = (tmp_path / "variants").rglob("shapes.safetensors")
    written = checkpoint.stat().st_mtime_ns
    again = quality.run(**settings, sampling=quality.Sampling("ddpm", 3), reuse=True)
    assert checkpoint.stat().st_mtime_ns == written  # judged, not trained again
    assert "DDIM 25 steps, eta 0" in first and "DDPM 3 steps" in again
    assert f"trained by an earlier run: this one reused {checkpoint}" in again
    with pytest.raises(SystemExit, match="steps: 2, asked 3"):
        quality.run(**{**settings, "steps": 3}, reuse=True)
    with pytest.raises(SystemExit, match="no model at"):
        quality.run(**{**settings, "root": tmp_path / "elsewhere"}, reuse=True)
