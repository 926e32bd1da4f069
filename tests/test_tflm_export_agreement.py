"""The exporter's check that the deployed model decides what the Keras model decides (tflm_export.export)."""

import json

import numpy as np
import pytest
from PIL import Image

from qgt_keras import conversion
from test_tflm_export_common import TINY_BITS, calibration_images, tiny_model
from tflm_export import export
from tflm_export.tflite_model import ExportError


@pytest.fixture(scope="module")
def off_grid_qgt_file(tmp_path_factory):
    """A 1-bit QGT model of the tiny net, still in its float phase with float kernels: exported with resnap,
    its snapped int8 model cannot make the Keras model's decisions."""
    path = tmp_path_factory.mktemp("off_grid") / "off_grid.keras"
    conversion.quantize_model(tiny_model(seed=1), bits=1, edge_bits=None).save(path)
    return str(path)


def test_an_export_that_agrees_reports_it(tmp_path):
    model_path, data_path = tmp_path / "tiny.keras", tmp_path / "calibration.npy"
    tiny_model().save(model_path)
    np.save(data_path, calibration_images(32))
    report = export.export(str(model_path), str(tmp_path / "out"), TINY_BITS, calibration=str(data_path),
                           verify_count=2)
    agreement = report["agreement"]
    assert agreement["samples"] == 32 and agreement["agreement"] >= export.DEFAULT_MIN_AGREEMENT
    assert agreement["keras_accuracy"] is None  # an array has no labels
    assert json.loads((tmp_path / "out" / "size_report.json").read_text())["agreement"] == agreement
    assert "the same top-1 class on" in (tmp_path / "out" / "size_report.md").read_text()


def test_an_export_that_disagrees_fails_and_writes_nothing(off_grid_qgt_file, tmp_path):
    samples = calibration_images(48, seed=4)
    with pytest.raises(ExportError, match=r"the int8 model disagrees with the Keras model .*off_grid\.keras: int8 "
                                          r"and packed .* the same top-1 class on [\d.]+% of 48 calibration samples, "
                                          r"below the least agreement 95% \(min_agreement\); nothing written"):
        export.export(off_grid_qgt_file, str(tmp_path / "out"), calibration=samples, verify_count=2, resnap=True)
    assert not (tmp_path / "out").exists()
    report = export.export(off_grid_qgt_file, str(tmp_path / "out"), calibration=samples, verify_count=2,
                           resnap=True, min_agreement=0)
    assert report["agreement"]["agreement"] < 0.9 and (tmp_path / "out" / "size_report.json").exists()


def test_image_folder_labels_give_both_accuracies(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    model_path = tmp_path / "tiny.keras"
    tiny_model().save(model_path)
    report = export.export(str(model_path), str(tmp_path / "out"), TINY_BITS,
                           calibration=str(tmp_path / "images"), verify_count=2, min_agreement=0)
    agreement = report["agreement"]
    assert agreement["samples"] == 12
    # Noise images: the accuracies are whatever the random net gives, but they are measured on the labels.
    for key in ("keras_accuracy", "int8_accuracy"):
        assert agreement[key] in {k / 12 for k in range(13)}
    assert "top-1 accuracy on their labels" in (tmp_path / "out" / "size_report.md").read_text()


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.9", True])
def test_min_agreement_must_be_a_share(tmp_path, value):
    with pytest.raises(ExportError, match="min_agreement must be a number in"):
        export.export("any.keras", str(tmp_path / "out"), min_agreement=value)


def test_the_command_line_default_is_the_exporters():
    from qgt import export as export_cli
    assert export_cli.DEFAULT_MIN_AGREEMENT == export.DEFAULT_MIN_AGREEMENT
    assert export_cli.build_parser().parse_args(["--model=m", "--out_dir=o"]).min_agreement == \
        export.DEFAULT_MIN_AGREEMENT
