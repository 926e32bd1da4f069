"""benchmarks/accuracy_vs_size.py without training: its figures (plot_ood's horizontal bars on synthetic rows:
every value visible, a missing int8 measure, a value far below 0.5; --replot, which draws the PNGs again from a
results JSON without touching the JSON or .md) and its per-row seeding (run_dataset with training stubbed)."""

import itertools
import json
import pathlib
import sys
import types

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import accuracy_vs_size  # noqa: E402  (benchmarks/ is not a package: its scripts import it as a sibling)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(dataset, label, method, bits, agreement, auc, int8=None, deployed_bytes=10_000):
    """One aggregated row as accuracy_vs_size.aggregate writes it, with the fields the figures read (no
    out-of-scene ones where ``agreement`` is None)."""
    row = {"dataset": dataset, "label": label, "method": method, "variant": False, "bits": float(bits), "seeds": 3,
           "accuracy_mean": 0.9, "accuracy_std": 0.01, "deployed_bytes": deployed_bytes, "pareto": True}
    if agreement is not None:
        row.update(ood_agreement=agreement, ood_agreement_std=0.02, ood_auc_vs_teacher=auc,
                   ood_auc_vs_teacher_std=0.01)
    if int8 is not None:
        row.update(ood_int8_agreement=int8[0], ood_int8_agreement_std=0.03, ood_int8_auc_vs_teacher=int8[1],
                   ood_int8_auc_vs_teacher_std=0.01)
    return row


ROWS = [
    _row("person96_spatial", "teacher (MLPerf float, not fine-tuned)", "teacher", 32, 1.0, 1.0, deployed_bytes=800_000),
    _row("person96_spatial", "qgt", "qgt", 2, 0.66, 0.74, int8=(0.64, 0.73), deployed_bytes=30_000),
    _row("person96_spatial", "tfmot_qat", "tfmot_qat", 2, 0.12, 0.30),  # far below 0.5, no int8 measure
    _row("person96", "qgt_mixed (distilled + data/transfer + 40% person; scales every 16 steps)", "qgt_mixed", 2.4333,
         0.93, 0.97, int8=(0.92, 0.96)),
    _row("fashion_mnist", "qgt", "qgt", 2, None, None),  # no out-of-scene measures
]


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved while the test runs, each at its savefig."""
    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def recording(figure, *args, **kwargs):
        figures.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    return figures


def test_plot_ood_draws_every_bar_inside_its_axis(tmp_path, drawn):
    path = tmp_path / "ood.png"
    accuracy_vs_size.plot_ood(ROWS, path)
    _assert_png(path)
    [figure] = drawn
    axes = figure.axes
    assert len(axes) == 4  # person96_spatial and person96, agreement and AUC each; fashion_mnist has no ood rows
    for axis, scale, values in ((axes[0], 100, [1.0, 0.66, 0.64, 0.12]), (axes[1], 1, [1.0, 0.74, 0.73, 0.30]),
                                (axes[2], 100, [0.93, 0.92]), (axes[3], 1, [0.97, 0.96])):
        bars = [patch for patch in axis.patches if patch.get_height() > 0]
        assert sorted(bar.get_width() for bar in bars) == pytest.approx(sorted(scale * v for v in values))
        low, high = axis.get_xlim()
        for bar in bars:  # the bar's end and its error bar (std 0.02 or 0.03 of scale at most) in the range
            assert low <= bar.get_width() - 0.03 * scale and bar.get_width() + 0.03 * scale <= high
        texts = [text.get_text() for text in axis.texts]
        assert ("goal 97%" if scale == 100 else "goal 0.97") in texts
        assert (f"{100 * values[-1]:.1f}" if scale == 100 else f"{values[-1]:.3f}") in texts  # value at the bar end
        assert any(line.get_xdata()[0] == (97 if scale == 100 else 0.97) for line in axis.lines)  # the goal line
    assert axes[0].get_xlim()[0] <= 12 - 2  # tfmot_qat's 12% (minus its std) is on the axis, not cut at 50
    labels = [tick.get_text() for tick in axes[0].get_yticklabels()]
    assert labels[2] == "tfmot_qat ·\u00a02\u00a0bits" and labels[0].startswith("teacher")
    assert any("2.43\u00a0bits" in tick.get_text() for tick in axes[2].get_yticklabels())
    assert len(axes[0].patches) == 4 and len(axes[2].patches) == 2  # no bar for the missing int8 measure
    [legend] = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "Keras model", "deployed int8 (TFLite-Micro), where measured", "goal: agreement 97%, AUC 0.97"]


def test_plot_ood_grows_with_the_rows_and_skips_data_sets_without_ood(tmp_path, drawn):
    accuracy_vs_size.plot_ood(ROWS[:2], tmp_path / "two.png")
    accuracy_vs_size.plot_ood(ROWS[:4] + [dict(row, dataset="person96") for row in ROWS[:3]], tmp_path / "seven.png")
    two, seven = drawn
    assert seven.get_figheight() > two.get_figheight() + 1
    accuracy_vs_size.plot_ood(ROWS[-1:], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_replot_draws_the_pngs_from_the_json_and_leaves_it(tmp_path, monkeypatch):
    out = tmp_path / "results" / "accuracy_vs_size_tiny"
    out.parent.mkdir()
    out.with_suffix(".json").write_text(json.dumps(
        {"provenance": {"commit": "0" * 40}, "config": {"person96_spatial": "synthetic"}, "rows": ROWS, "runs": []},
        indent=1))
    out.with_suffix(".md").write_text("# the results as written\n")
    before = {path: path.read_bytes() for path in out.parent.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("--replot trained")

    monkeypatch.setattr(accuracy_vs_size, "run_dataset", no_training)
    monkeypatch.setattr(accuracy_vs_size.recipes, "build_setup", no_training)
    flags = accuracy_vs_size.FLAGS
    flags(["accuracy_vs_size.py", "--replot", f"--out={out}"])
    try:
        accuracy_vs_size.main(["accuracy_vs_size.py"])
    finally:
        flags.unparse_flags()
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path.name} changed"
    written = sorted(path.name for path in out.parent.iterdir() if path not in before)
    assert written == ["accuracy_vs_size_tiny.png", "accuracy_vs_size_tiny_ood.png"]
    for name in written:
        _assert_png(out.parent / name)
    assert accuracy_vs_size.replot(out) == [out.with_suffix(".png"), out.parent / "accuracy_vs_size_tiny_ood.png"]
    assert {path: path.read_bytes() for path in before} == before


def test_each_row_draws_the_same_numbers_whatever_ran_before_it(monkeypatch, tmp_path):
    """run_dataset seeds every row by its seed and key and gives it fresh data: a row's draws (here a number and
    the batches it reads) are the same when it runs alone as after the rows before it, and differ between rows
    and between seeds."""
    if not accuracy_vs_size.FLAGS.is_parsed():
        accuracy_vs_size.FLAGS(["accuracy_vs_size"])
    rows = accuracy_vs_size.GRIDS["fashion_mnist"][:4]
    monkeypatch.setattr(accuracy_vs_size, "grid", lambda name: rows)
    monkeypatch.setattr(accuracy_vs_size.FLAGS, "seeds", 2)
    monkeypatch.setattr(accuracy_vs_size.FLAGS, "seeds_8bit", 2)
    monkeypatch.setattr(accuracy_vs_size.FLAGS, "quick", False)
    # A pipeline like tf.data's reshuffling one: what a pass reads depends on the passes read before it.
    monkeypatch.setattr(accuracy_vs_size.recipes, "build_setup",
                        lambda seed, **options: types.SimpleNamespace(batches=itertools.count(1000 * seed)))
    monkeypatch.setattr(accuracy_vs_size, "run_row", lambda setup, row: types.SimpleNamespace(
        bits=1.0, accuracy=float(np.random.random()), batches=(next(setup.batches), next(setup.batches))))
    monkeypatch.setattr(accuracy_vs_size, "measure_run",
                        lambda name, seed, row, setup, result, ood: {"dataset": name, "seed": seed, "key": row.key,
                                                                     "draw": (result.accuracy, result.batches)})

    class Partial(accuracy_vs_size.Partial):
        def float_start(self, dataset, seed, setup):
            np.random.random()  # the float start draws and reads too, and differently often in a resumed run
            next(setup.batches)

    def draws(skip):
        partial = Partial(tmp_path / f"skip{len(skip)}", {})
        partial.runs = [{"dataset": "fashion_mnist", "seed": s, "key": k} for s, k in skip]
        accuracy_vs_size.run_dataset("fashion_mnist", partial, lambda: None)
        return {(r["seed"], r["key"]): r["draw"] for r in partial.runs if "draw" in r}

    everything = draws([])
    last_only = draws([(s, row.key) for s in (0, 1) for row in rows[:-1]])
    assert len(everything) == 2 * len(rows) and set(last_only) == {(0, rows[-1].key), (1, rows[-1].key)}
    for key, value in last_only.items():
        assert value == everything[key]
    assert len(set(everything.values())) == len(everything)
