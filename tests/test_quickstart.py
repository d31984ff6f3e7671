"""`rayft quickstart` end to end on the session's Ray: every stage, and the adapter beats the base."""

import json
import socket

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def test_quickstart_runs_every_stage_and_the_adapter_beats_the_base(ray_cluster, tmp_path, monkeypatch, capsys):
    from rayft.quickstart import run_quickstart

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = run_quickstart(port=port)

    data = summary["data"]
    removed = data["rejected"] + data["duplicates_exact"] + data["duplicates_near"] + data["leaked"]
    assert data["input"] == data["kept"] + removed and data["rejected"] == 5
    assert data["duplicates_exact"] > 0 and data["duplicates_near"] > 0  # the sample plants both
    for run in ("base_training", "adapter_training"):
        assert summary[run]["final_loss"] < summary[run]["first_loss"]
    assert summary["eval"]["adapter"] >= summary["eval"]["base"] + 0.3
    assert summary["served"]["adapter"].startswith("Category:")
    assert not summary["served"]["base"].startswith("Category:")
    assert json.loads((tmp_path / "quickstart" / "summary.json").read_text()) == summary
    printed = capsys.readouterr().out
    assert "category accuracy" in printed and "served answer: adapter" in printed

    from rayft.registry import Registry

    adapter = Registry().get(summary["adapter_training"]["ref"])
    assert adapter.parent == summary["base_training"]["ref"]  # lineage: LoRA on the registered full model
    assert adapter.eval_report["metrics"]["candidate"]["accuracy"] == summary["eval"]["adapter"]
