"""ppo/metrics.py: CSV/JSONL rows, resume, dropping rows after a checkpoint, the learning-curve PNG."""

from __future__ import annotations

import json
import math

from esper_fast.ppo.metrics import MetricsWriter, plot_learning_curve, read_metrics_csv


def rows(n: int) -> list[dict]:
    return [
        {"update": i, "global_step": 10 * i, "charts/episode_return": float(i), "losses/x": 0.5 * i}
        for i in range(1, n + 1)
    ]


def test_csv_and_jsonl_hold_the_same_rows(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for r in rows(3):
        w.write(r)
    w.close()
    assert read_metrics_csv(tmp_path / "metrics.csv") == [{k: float(v) for k, v in r.items()} for r in rows(3)]
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == rows(3)


def test_non_finite_values_become_empty_cells_and_json_null(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"update": 1, "global_step": 1, "a": math.nan, "b": math.inf, "c": None})
    assert read_metrics_csv(tmp_path / "metrics.csv") == [
        {"update": 1.0, "global_step": 1.0, "a": None, "b": None, "c": None}
    ]
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "update": 1,
        "global_step": 1,
        "a": None,
        "b": None,
        "c": None,
    }


def test_a_resumed_writer_keeps_the_header_and_its_column_order(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"update": 1, "global_step": 1, "x": 1.0})
    w2 = MetricsWriter(tmp_path, tensorboard=False)
    w2.write({"x": 2.0, "global_step": 2, "update": 2, "new": 5.0})  # other order, an unknown column
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["update,global_step,x", "1,1,1.0", "2,2,2.0"]


def test_drop_rows_after_keeps_whole_rows_up_to_the_update(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for r in rows(5):
        w.write(r)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"update": 6, "glob')  # a line cut short by a kill
    assert w.drop_rows_after(3) == 2
    assert [r["update"] for r in read_metrics_csv(tmp_path / "metrics.csv")] == [1.0, 2.0, 3.0]
    assert [json.loads(line)["update"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert w.drop_rows_after(3) == 0


def test_plot_learning_curve_writes_a_png(tmp_path):
    path = plot_learning_curve(
        rows(4), tmp_path / "curve.png", baselines={"random": 1.0}, finals={"ppo (greedy)": 3.0}, eval_note="8 episodes"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plot_learning_curve([], tmp_path / "empty.png")
    assert empty.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
