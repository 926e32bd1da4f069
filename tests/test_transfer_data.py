"""The committed transfer set data/transfer/: files, provenance and counts agree, and it shares no picture or
package with the out-of-scene set data/ood that measures what it teaches (no network needed)."""

import collections
import csv
import hashlib
import pathlib
import re

import pytest
from PIL import Image

from conftest import load_script
from photo_sets import assert_crops_are_build_windows

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRANSFER = ROOT / "data" / "transfer"
OOD = ROOT / "data" / "ood"
EXCLUDED_PACKAGES = re.compile(r"opencv|darknet|skimage|scikit-image|matplotlib|sklearn|scikit-learn", re.I)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digests(paths):
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def manifest():
    return _read_csv(TRANSFER / "manifest.csv")


@pytest.fixture(scope="module")
def sources():
    return {row["photo_id"]: row for row in _read_csv(TRANSFER / "sources.csv")}


@pytest.fixture(scope="module")
def build():
    return load_script(TRANSFER / "build.py", "transfer_build")


def test_images_folder_holds_exactly_the_manifests_96x96_rgb_jpegs(manifest):
    on_disk = {p.relative_to(TRANSFER).as_posix() for p in (TRANSFER / "images").iterdir()}
    assert on_disk == {row["file"] for row in manifest} and len(manifest) == len(on_disk)
    for row in manifest:
        with Image.open(TRANSFER / row["file"]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 96)), row["file"]


def test_crops_are_the_build_windows_of_their_sources(manifest, sources, build):
    assert_crops_are_build_windows(manifest, sources, build)
    assert all(row["file"].startswith(f"{build.IMAGES}/") for row in manifest)


def test_no_picture_or_package_is_shared_with_the_out_of_scene_set(sources):
    ood_sources = _read_csv(OOD / "sources.csv")
    assert not {row["sha256"] for row in ood_sources} & {row["sha256"] for row in sources.values()}
    assert not {row["package"] for row in ood_sources} & {row["package"] for row in sources.values()}


def test_no_crop_equals_an_out_of_scene_or_person96_image(manifest):
    # (Within the set a few crops repeat: a tiled texture, two pictures that share a half.)
    crops = _digests(TRANSFER / row["file"] for row in manifest)
    others = _digests([*(ROOT / "data" / "person96").rglob("*.jpg"), *OOD.rglob("*.jpg")])
    assert len(others) > 4000 and not crops & others


def test_sources_are_distinct_free_packages_outside_the_excluded_sets(sources):
    assert len(sources) >= 400
    assert len({row["sha256"] for row in sources.values()}) == len(sources)
    for photo_id, source in sources.items():
        assert not EXCLUDED_PACKAGES.search(source["package"] + source["path"]), photo_id
        assert source["license"] and re.fullmatch(r"[0-9a-f]{64}", source["sha256"]), photo_id


def test_counts_match_the_readme(manifest, sources):
    readme = (TRANSFER / "README.md").read_text()
    quoted = {package: (int(pictures), int(crops.replace(",", ""))) for package, pictures, crops in
              re.findall(r"^\| ([a-z0-9.-]+) \| [^|]+ \| (\d+) \| ([\d,]+) \|", readme, re.M)}
    counts = {package: (sum(s["package"] == package for s in sources.values()),
                        sum(m["package"] == package for m in manifest)) for package in quoted}
    assert quoted == counts and set(quoted) == {s["package"] for s in sources.values()}
    assert f"{len(manifest):,} crops of {len(sources)} pictures" in readme
