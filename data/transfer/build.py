"""Rebuilds the unlabeled transfer crops of data/transfer/ from the packages that ship the photos.

    python data/transfer/build.py [--download-dir DIR] [--exclude DIR ...]

Reads ``sources.csv`` (one row per photo, the columns of data/photo_packages.py), downloads each package
once with ``apt-get download`` (into a temporary folder unless ``--download-dir`` keeps them), reads the
photos straight out of the archives, checks their hashes and sizes, cuts the windows of :func:`crop_windows`
and writes ``images/`` and ``manifest.csv`` beside this script. Everything is written to a temporary folder
first and swapped in at the end, so a failed build leaves the committed set as it was.

``--exclude DIR`` refuses any photo whose bytes equal, or whose picture matches, an image under DIR (the
sample images kept out of the project, see README.md). No photo of data/ood's packages is used: this set
trains, data/ood measures.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from photo_packages import (  # noqa: E402  (data/photo_packages.py, shared with data/ood/build.py)
    ARCHIVE_REGISTRY, build_main, crop_windows as _crop_windows, crop_file_name, excluded_fingerprints, read_sources,
    save_crop, staging_folder, swap_in, upright_photos, write_csv)

HERE = pathlib.Path(__file__).resolve().parent
IMAGES = "images"
MAX_WINDOWS_PER_SCALE = 4
MANIFEST_COLUMNS = ("file", "photo_id", "registry", "package", "version", "archive", "path", "license", "x0", "y0",
                    "size", "source_sha256")


def crop_windows(width, height):
    """The crop windows of a photo (photo_packages.crop_windows, at most 4 per side length)."""
    return _crop_windows(width, height, MAX_WINDOWS_PER_SCALE)


def build(download_dir, exclude_dirs=()):
    sources = read_sources(HERE / "sources.csv")
    fingerprints = excluded_fingerprints(exclude_dirs) if exclude_dirs else None
    with staging_folder(HERE) as staging:
        (staging / IMAGES).mkdir()
        manifest = []
        for row, digest, image in upright_photos(sources, download_dir, fingerprints):
            for window in crop_windows(*image.size):
                name = f"{IMAGES}/{crop_file_name(row['photo_id'], *window)}"
                save_crop(image, window, staging / name)
                manifest.append({"file": name, "photo_id": row["photo_id"],
                                 "registry": ARCHIVE_REGISTRY[row["archive"]], "package": row["package"],
                                 "version": row["version"], "archive": row["archive"], "path": row["path"],
                                 "license": row["license"], "x0": window[0], "y0": window[1], "size": window[2],
                                 "source_sha256": digest})
        write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, sorted(manifest, key=lambda r: r["file"]))
        swap_in(staging, HERE, (IMAGES, "manifest.csv"))
    return manifest


def main(argv=None):
    manifest = build_main(build, __doc__.split("\n\n")[0], argv)
    print(f"{len(manifest)} crops of {len({row['photo_id'] for row in manifest})} photos")


if __name__ == "__main__":
    main()
