"""The committed out-of-scene set data/ood/: files, labels, provenance and counts agree (no network needed)."""

import collections
import csv
import hashlib
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from photo_sets import assert_crops_are_build_windows
from qgt_keras import datasets

ROOT = pathlib.Path(__file__).resolve().parent.parent
OOD = ROOT / "data" / "ood"
# The sample images that stay out of the project (see data/ood/README.md), by the names of their packages.
EXCLUDED_PACKAGES = re.compile(r"opencv|darknet|skimage|scikit-image|matplotlib|sklearn|scikit-learn", re.I)


def _read_csv(name):
    with open(OOD / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def manifest():
    return _read_csv("manifest.csv")


@pytest.fixture(scope="module")
def sources():
    return {row["photo_id"]: row for row in _read_csv("sources.csv")}


@pytest.fixture(scope="module")
def build():
    return load_script(OOD / "build.py", "ood_build")


def test_every_manifest_file_is_a_96x96_rgb_jpeg(manifest):
    assert len(manifest) == len({row["file"] for row in manifest})
    for row in manifest:
        with Image.open(OOD / row["file"]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 96)), row["file"]


def test_folders_hold_exactly_the_manifest_with_its_labels(manifest, build):
    on_disk = {p.relative_to(OOD).as_posix() for folder in ("labeled", "unlabeled")
               for p in (OOD / folder).rglob("*") if p.is_file()}
    assert on_disk == {row["file"] for row in manifest}
    for row in manifest:
        assert row["file"].startswith(build.LABEL_FOLDERS[row["label"]] + "/"), row["file"]


def test_counts_per_label_match_the_readme(manifest):
    readme = (OOD / "README.md").read_text()
    quoted = {label: int(n.replace(",", "")) for label, n in
              re.findall(r"^\| `?(person|non_person|unlabeled)`? \| ([\d,]+) \|", readme, re.M)}
    counts = collections.Counter(row["label"] for row in manifest)
    assert quoted == dict(counts)
    total = re.search(r"^\| \*\*total\*\* \| \*\*([\d,]+)\*\* \|", readme, re.M)
    assert total and int(total.group(1).replace(",", "")) == len(manifest)


def test_no_crop_equals_a_person96_image(manifest):
    person96 = {hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (ROOT / "data" / "person96").rglob("*.jpg")}
    assert len(person96) > 3000
    crops = {hashlib.sha256((OOD / row["file"]).read_bytes()).hexdigest() for row in manifest}
    assert len(crops) == len(manifest)  # no two crops are the same file either
    assert not crops & person96


def test_photo_ids_group_crops_with_their_provenance(manifest, sources, build):
    assert_crops_are_build_windows(manifest, sources, build)
    per_photo = collections.Counter(row["photo_id"] for row in manifest)
    assert max(per_photo.values()) <= 30


def test_labels_file_is_the_manifests_labels(manifest):
    labels = {(r["photo_id"], r["x0"], r["y0"], r["size"]): r["label"] for r in _read_csv("labels.csv")}
    assert labels == {(r["photo_id"], r["x0"], r["y0"], r["size"]): r["label"] for r in manifest}


def test_sources_are_free_packages_outside_the_excluded_sets(sources):
    assert len(sources) >= 40
    for photo_id, source in sources.items():
        assert not EXCLUDED_PACKAGES.search(source["package"] + source["path"]), photo_id
        assert source["license"] and re.fullmatch(r"[0-9a-f]{64}", source["sha256"]), photo_id


def test_both_labels_come_from_many_photos(manifest):
    photos = collections.defaultdict(set)
    for row in manifest:
        photos[row["label"]].add(row["photo_id"])
    assert len(photos["person"]) >= 30 and len(photos["non_person"]) >= 40


def test_labeled_folder_reads_as_the_two_vww_classes(manifest):
    dataset, info = datasets.read_image_folder(OOD / "labeled", batch_size=64)
    assert info.class_names == datasets.VWW_CLASS_NAMES and info.skipped == ()
    assert info.num_examples == sum(row["label"] != "unlabeled" for row in manifest)
    images, labels = next(iter(dataset))
    assert images.shape[1:] == (96, 96, 3) and set(labels.numpy()) <= {0, 1}


def test_the_reader_gives_every_crop_with_its_label_and_photo(manifest):
    crops = datasets.read_out_of_scene(image_size=(32, 32))
    assert crops.images.shape == (len(manifest), 32, 32, 3) and crops.images.dtype == np.float32
    assert 0 <= crops.images.min() and crops.images.max() <= 1 + 1e-5  # (antialiased resizing rounds)
    codes = {"non_person": 0, "person": 1, "unlabeled": datasets.UNLABELED}
    assert list(crops.labels) == [codes[row["label"]] for row in manifest]
    assert list(crops.photo_ids) == [row["photo_id"] for row in manifest]
    assert crops.files == tuple(row["file"] for row in manifest)
    assert int(crops.labeled.sum()) == sum(row["label"] != "unlabeled" for row in manifest)


def test_the_reader_names_a_missing_crop(tmp_path, manifest):
    (tmp_path / "manifest.csv").write_text((OOD / "manifest.csv").read_text())
    with pytest.raises(FileNotFoundError, match=f"lists {manifest[0]['file']}, which is not in {tmp_path}"):
        datasets.read_out_of_scene(tmp_path)
