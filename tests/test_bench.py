"""`jdiff bench` at tiny sizes on the CPU: runs, writes its JSON, and compares with diffusers when asked."""

import json

from jdiff.cli import main


def test_bench_tiny_with_diffusers(tmp_path, capsys):
    assert (
        main(["bench", "--tiny", "--only", "flux_step", "--compare", "diffusers", "--out", str(tmp_path)])
        == 0
    )
    results = json.loads((tmp_path / "compare.json").read_text())
    by_engine = {r["engine"]: r for r in results}
    assert set(by_engine) == {"jdiff", "diffusers", "diffusers-compile"}
    assert all(r.get("finite") and r["ms"] > 0 for r in results), results
    table = capsys.readouterr().out
    assert "| FLUX.1-dev transformer step, 1024x1024 | jdiff |" in table
