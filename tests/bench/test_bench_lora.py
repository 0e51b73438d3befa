"""`jdiff bench`'s LoRA workloads at tiny sizes on the CPU (the lead runs the real ones on a GPU)."""

import json

from jdiff import bench
from jdiff.cli import main


def test_bench_tiny_lora_mixed_batch(tmp_path, capsys):
    argv = ["bench", "--tiny", "--only", "flux_lora_batch4_mixed", "--engines", "jdiff"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    (r,) = json.loads((tmp_path / "compare.json").read_text())
    assert r["finite"] and r["ms"] > 0 and r["out_shape"] == [4, 16, 64], r
    assert "4 rank-4 LoRAs (one per row) | jdiff |" in capsys.readouterr().out


def test_lora_workloads_are_flux_dev_with_rank_32():
    for name, batch, slots in (
        ("flux_lora_step", 1, 1),
        ("flux_lora_batch4_one", 4, 1),
        ("flux_lora_batch4_mixed", 4, 4),
    ):
        _, cfg, sizes = bench._resolve(name, tiny=False)
        assert cfg["num_layers"] == 19 and sizes == dict(
            h=64, w=64, text=512, batch=batch, slots=slots, rank=32
        )
