"""The demo data builder and the comparison run, at a reduced size."""
from __future__ import annotations

import json

import pandas as pd

from crossfuse.cli.main import main
from crossfuse.data.demo import build_digits_demo


def test_demo_data_is_deterministic_and_ambiguous_per_view(tmp_path):
    a = pd.read_csv(build_digits_demo(tmp_path / "a", limit=200))
    b = pd.read_csv(build_digits_demo(tmp_path / "b", limit=200))
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a" / a.loc[0, "image"]).is_file()
    # the caption names parity and size only: several digits share each caption meaning
    evens = a[a.label % 2 == 0].caption
    assert evens.str.contains("even|divisible by two").all() and not a.caption.str.contains(r"\d{2}").any()


def test_demo_command_writes_the_comparison(tmp_path, capsys):
    build_digits_demo(tmp_path / "data", limit=150)
    assert main(["-q", "demo", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), "--epochs", "1"]) == 0
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["model"] for r in rows] == ["image only", "text only", "tabular only", "concat fusion",
                                         "weighted fusion", "attention fusion"]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 1000
    assert "| attention fusion | image+text+tabular |" in capsys.readouterr().out
