"""tf.data readers for person detection (Visual Wake Words layouts) and Fashion-MNIST.

Every reader returns ``(dataset, info)``:

* ``dataset`` yields ``(images, labels)`` batches: float32 images in [0, 1] (pixels / 255, as the MLPerf
  Tiny VWW reference reads them) of shape (batch, height, width, channels) and int32 class indices of
  shape (batch,), for ``sparse_categorical_crossentropy``.
* ``info`` is a :class:`DatasetInfo`: class names, image shape, how many examples were readable and which
  were skipped as unreadable.

Person detection labels follow the sorted class names: ``non_person`` = 0, ``person`` = 1.

Unreadable images. With ``validate=True`` (the default) a reader first decodes every image once in a
parallel tf.data pass, lists the unreadable ones in ``info.skipped`` and logs a warning naming them; the
file readers then leave them out of the list. The pipeline itself drops any element whose decoding fails
(``ignore_errors``), so a bad image costs one logged example, never an epoch. Validation costs one decode
per image (3,300 96x96 JPEGs took 1.3 s on two cores, so about 45 s for 115k; more for full-size COCO
images); ``validate=False`` skips it (then ``info.skipped`` is None).

Scale. The folder and COCO readers hold only the list of file names in memory and decode in parallel
(``num_parallel_calls=AUTOTUNE``) after shuffling the names, so a 115k-image copy streams; the TFRecord
reader interleaves the record files and shuffles through a bounded buffer. Every dataset ends with
``prefetch(AUTOTUNE)``.

Several devices. ``batch_size`` is the global batch: build the model and call ``model.fit(dataset)``
inside ``tf.distribute.MirroredStrategy().scope()`` and Keras splits each batch across the replicas (or
pass the dataset to ``strategy.experimental_distribute_dataset`` in a custom loop). For multi-worker
strategies the datasets set the auto-shard policy that fits their source: by file for TFRecords, by
element otherwise.

Unlabeled images (``load_data(unlabeled_dir=...)``, :func:`read_unlabeled_images`): images of other scenes
with the label :data:`UNLABELED`, appended to every training batch, from which a student learns its
teacher's soft targets (``qgt_keras.distillation``); the bundled ``data/transfer`` is such a set.

Augmentation (``augment=True``, meant for training): :mod:`qgt_keras.augmentation`. IDX files:
:mod:`qgt_keras.idx`.
"""

import csv
import dataclasses
import json
import logging
import math
import os
import pathlib
import re

import numpy as np
import tensorflow as tf

from qgt_keras import augmentation, idx
from qgt_keras.distillation import UNLABELED

VWW_CLASS_NAMES = ("non_person", "person")
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where Debian's dataset-fashion-mnist package installs the IDX files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

_AUTOTUNE = tf.data.AUTOTUNE
_TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}
# Skipped examples named in one warning; the rest are only counted.
_NAMED_IN_WARNING = 10

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a reader read.

    Attributes:
        source: the folder, file pattern or annotation file that was read.
        class_names: class name of each label index.
        image_shape: (height, width, channels) of the images the dataset yields.
        num_examples: readable examples in one epoch (before ``drop_remainder``); without validation, the
            number of files listed, or None for TFRecords.
        skipped: unreadable files (or ``"file[record index]"`` for TFRecords) that were left out; None when
            the reader did not validate.
    """

    source: str
    class_names: tuple
    image_shape: tuple
    num_examples: int | None
    skipped: tuple | None

    @property
    def num_classes(self):
        return len(self.class_names)


def _bundled(name, what):
    path = pathlib.Path(__file__).resolve().parent.parent / "data" / name
    if not path.is_dir():
        raise FileNotFoundError(f"bundled {what} not found at {path}: use a source checkout of qgt")
    return path


def bundled_person96_dir():
    """The person96 data set shipped in this repository (``data/person96``, with train/ and test/)."""
    return _bundled("person96", "person96 data")


def bundled_ood_dir():
    """The out-of-scene crops shipped in this repository (``data/ood``; see its README)."""
    return _bundled("ood", "out-of-scene set")


def bundled_transfer_dir():
    """The unlabeled crops of other scenes shipped in this repository (``data/transfer``; see its README), for
    distillation; none of data/ood's photos."""
    return _bundled("transfer", "transfer set")


# person96's windows (data/person96/README.md): 192x192 pixels of the 768x576 video at stride 96, named
# vtest_f{frame}_x{x0}_y{y0}.jpg. The spatial split puts the windows that lie left of this column into the
# test split and those that lie right of it into the training split; the windows that cross it share pixels
# with both sides and are in neither.
PERSON96_WINDOW = 192
SPATIAL_SPLIT_X = 288
_WINDOW_NAME = re.compile(r"_x(\d+)_y(\d+)\.[a-z]+$")


def window_origin(path):
    """(x0, y0) of a person96 window from its file name; ValueError naming the file if it has none."""
    match = _WINDOW_NAME.search(os.path.basename(str(path)))
    if match is None:
        raise ValueError(f"{path}: not a person96 window name (..._x{{x0}}_y{{y0}}.jpg)")
    return int(match.group(1)), int(match.group(2))


def spatial_split(root=None):
    """{"train": (paths, labels), "test": (paths, labels)}: person96's windows of both of its folders (every
    frame), split by window position so that no training window shares a pixel with a test window (see
    :data:`SPATIAL_SPLIT_X`). Labels index :data:`VWW_CLASS_NAMES`."""
    root = pathlib.Path(root) if root else bundled_person96_dir()
    splits = {"train": ([], []), "test": ([], [])}
    for folder in ("train", "test"):
        for label, class_name in enumerate(VWW_CLASS_NAMES):
            class_dir = root / folder / class_name
            if not class_dir.is_dir():
                raise FileNotFoundError(f"person96 folder {class_dir} does not exist")
            for path in _list_images(class_dir):
                x0, _ = window_origin(path)
                split = ("test" if x0 + PERSON96_WINDOW <= SPATIAL_SPLIT_X else
                         "train" if x0 >= SPATIAL_SPLIT_X else None)
                if split is not None:
                    splits[split][0].append(path)
                    splits[split][1].append(label)
    return splits


# UNLABELED (qgt_keras.distillation): the label of an image without a class, an out-of-scene crop whose
# person / non_person label is not clear or an unlabeled image for distillation.


@dataclasses.dataclass(frozen=True)
class OutOfScene:
    """The out-of-scene crops (``data/ood``) in memory: ``images`` (N, height, width, channels) in [0, 1],
    ``labels`` (N,) 0 non_person, 1 person or :data:`UNLABELED`, ``photo_ids`` (N,) the photo each crop was
    cut from (group by it: crops of one photo overlap), ``files`` their paths in the manifest."""

    images: np.ndarray
    labels: np.ndarray
    photo_ids: np.ndarray
    files: tuple

    @property
    def labeled(self):
        return self.labels != UNLABELED


def read_out_of_scene(data_dir=None, *, image_size=(96, 96), grayscale=False):
    """Reads every crop listed in ``data_dir/manifest.csv`` (default: :func:`bundled_ood_dir`) into an
    :class:`OutOfScene`, resized and colored for the model. Raises FileNotFoundError for a missing manifest or
    crop, ValueError for a label the manifest should not have."""
    root = pathlib.Path(data_dir) if data_dir else bundled_ood_dir()
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"out-of-scene manifest {manifest} does not exist")
    codes = {name: index for index, name in enumerate(VWW_CLASS_NAMES)} | {"unlabeled": UNLABELED}
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["label"] not in codes:
            raise ValueError(f"{manifest}: crop {row['file']} has label {row['label']!r}, not one of {sorted(codes)}")
        if not (root / row["file"]).is_file():
            raise FileNotFoundError(f"{manifest} lists {row['file']}, which is not in {root}")
    paths = [str(root / row["file"]) for row in rows]
    dataset, _ = _read_files(paths, [0] * len(paths), str(root), VWW_CLASS_NAMES, tuple(image_size), grayscale,
                             256, False, False, 0, True, None, False)
    images = np.concatenate([x.numpy() for x, _ in dataset])
    if len(images) != len(rows):
        raise ValueError(f"{root}: {len(rows) - len(images)} of the crops in its manifest could not be read")
    return OutOfScene(images, np.array([codes[row["label"]] for row in rows], np.int32),
                      np.array([row["photo_id"] for row in rows]), tuple(row["file"] for row in rows))


def read_image_folder(data_dir, *, image_size=(96, 96), grayscale=False, batch_size=32, shuffle=False,
                      augment=False, seed=0, validate=True, limit=None, drop_remainder=False):
    """Reads the MLPerf Tiny layout: one subfolder per class (``person/``, ``non_person/``) of images.

    Labels index the sorted subfolder names. Images of any size are resized to ``image_size``.

    Args:
        data_dir: folder holding the class folders, e.g. ``vw_coco2014_96`` or ``bundled_person96_dir() /
            "train"``.
        image_size: (height, width) of the images yielded.
        grayscale: yield 1-channel luminance images instead of RGB.
        batch_size: global batch size.
        shuffle: reshuffle every epoch (seeded by ``seed``).
        augment: apply the MLPerf augmentation (:func:`qgt_keras.augmentation.mlperf_augment`).
        seed: seed of the shuffling, the augmentation and the ``limit`` subset.
        validate: decode every image once first and leave out (and report) the unreadable ones.
        limit: use only this many images, a random subset fixed by ``seed`` (for quick runs).
        drop_remainder: drop the last partial batch.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: ``data_dir`` has no class folder, or a class folder has no image.
    """
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"image folder {data_dir} does not exist")
    class_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir())
    if not class_dirs:
        raise ValueError(f"image folder {data_dir} has no class subfolders (expected e.g. person/, non_person/)")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _list_images(class_dir)
        if not files:
            raise ValueError(f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return _read_files(paths, labels, str(data_dir), tuple(p.name for p in class_dirs), image_size, grayscale,
                       batch_size, shuffle, augment, seed, validate, limit, drop_remainder)


def read_coco_vww(annotations_json, images_dir, *, image_size=(96, 96), grayscale=False, batch_size=32,
                  shuffle=False, augment=False, seed=0, validate=True, limit=None, drop_remainder=False):
    """Reads a COCO-format Visual Wake Words split (as pyvww writes ``instances_{train,val}.json``).

    An image is ``person`` (1) when the annotation file has at least one annotation for it, else
    ``non_person`` (0). Images are read from ``images_dir / file_name``; the other arguments are those of
    :func:`read_image_folder`.

    Raises:
        FileNotFoundError: the annotation file or the image folder does not exist.
        ValueError: the annotation file lists no image.
    """
    annotations_json, images_dir = pathlib.Path(annotations_json), pathlib.Path(images_dir)
    if not annotations_json.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotations_json} does not exist")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder {images_dir} does not exist")
    with open(annotations_json) as f:
        coco = json.load(f)
    images = coco.get("images") or []
    if not images:
        raise ValueError(f"COCO annotation file {annotations_json} lists no images")
    with_person = {a["image_id"] for a in coco.get("annotations", [])}
    paths = [str(images_dir / im["file_name"]) for im in images]
    labels = [int(im["id"] in with_person) for im in images]
    return _read_files(paths, labels, str(annotations_json), VWW_CLASS_NAMES, image_size, grayscale, batch_size,
                       shuffle, augment, seed, validate, limit, drop_remainder)


def read_vww_tfrecords(file_pattern, *, image_size=(96, 96), grayscale=False, batch_size=32, shuffle=False,
                       augment=False, seed=0, validate=True, limit=None, drop_remainder=False,
                       shuffle_buffer=4096):
    """Reads TF-slim Visual Wake Words TFRecords (``image/encoded``, ``image/class/label``: 0 or 1).

    Args:
        file_pattern: a glob such as ``.../train.record-?????-of-00100``, or a list of files.
        limit: use only the first ``limit`` records (in file order).
        shuffle_buffer: records held for shuffling (the record files are shuffled too).
        validate: read every record once first to count the examples and the undecodable ones (the
            pipeline skips those anyway; this only counts and names them).
        The other arguments are those of :func:`read_image_folder`.

    Raises:
        FileNotFoundError: no file matches ``file_pattern``.
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(str(p))})
    if not files:
        raise FileNotFoundError(f"no TFRecord file matches {file_pattern}")
    channels = 1 if grayscale else 3

    def parse(record):
        example = tf.io.parse_single_example(record, _TFRECORD_FEATURES)
        image = _decode_image(example["image/encoded"], image_size, grayscale)
        return image, tf.cast(example["image/class/label"], tf.int32)

    if limit is not None:  # the first records in file order, the same ones every epoch
        records = tf.data.TFRecordDataset(files).take(limit)
    else:
        records = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            records = records.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        records = records.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                     num_parallel_calls=_AUTOTUNE)
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = records.map(parse, num_parallel_calls=_AUTOTUNE).ignore_errors(log_warning=True)

    if validate:
        num_examples, skipped = _validate_records(files, limit)
        _report_skipped(skipped, str(file_pattern))
    else:
        num_examples, skipped = None, None
    info = DatasetInfo(str(file_pattern), VWW_CLASS_NAMES, (*image_size, channels), num_examples, skipped)
    return _finish(dataset, batch_size, augment, seed, drop_remainder,
                   tf.data.experimental.AutoShardPolicy.FILE), info


def read_fashion_mnist(data_dir=None, split="train", *, batch_size=32, shuffle=False, augment=False, seed=0,
                       limit=None, drop_remainder=False):
    """Reads Fashion-MNIST from its IDX files (gzipped or not): 28x28x1 images, 10 classes.

    Args:
        data_dir: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default
            :data:`DEFAULT_FASHION_MNIST_DIR` (``apt-get install dataset-fashion-mnist``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        The other arguments are those of :func:`read_image_folder`. The arrays are small (47 MB) and
        are held in memory.

    Raises:
        FileNotFoundError: an IDX file is missing.
        ValueError: an unknown split, or an IDX file that is malformed or disagrees with its partner.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be one of {sorted(prefixes)}, got {split!r}")
    data_dir = pathlib.Path(data_dir or DEFAULT_FASHION_MNIST_DIR)
    images = idx.read_idx(_find_idx(data_dir, f"{prefixes[split]}-images-idx3-ubyte"))
    labels = idx.read_idx(_find_idx(data_dir, f"{prefixes[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} files in {data_dir} disagree: images {images.shape}, "
                         f"labels {labels.shape}")
    if limit is not None:
        keep = _random_subset(len(labels), limit, seed)
        images, labels = images[keep], labels[keep]

    dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype(np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda image, label: (tf.image.convert_image_dtype(image, tf.float32), label),
                          num_parallel_calls=_AUTOTUNE)
    info = DatasetInfo(str(data_dir), FASHION_MNIST_CLASS_NAMES, images.shape[1:] + (1,), len(labels), ())
    return _finish(dataset, batch_size, augment, seed, drop_remainder,
                   tf.data.experimental.AutoShardPolicy.DATA), info


# Data sets by name, as qgt-train and the recipes read them: a layout of files with a train and a test split.
NAMES = ("person_folder", "person96_spatial", "vww_tfrecords", "vww_coco", "fashion_mnist")


@dataclasses.dataclass
class Data:
    """Train and test pipelines plus a small unaugmented calibration slice of the training data."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    calibration: tuple  # (x, y) arrays: the bottleneck report, allocate_bits and BN re-estimation
    steps_per_epoch: int
    input_shape: tuple
    num_classes: int
    description: str
    # Unlabeled images whose batches distillation appends to each training batch (:func:`mix_unlabeled`), or None.
    unlabeled: "UnlabeledImages" = None


@dataclasses.dataclass(frozen=True)
class UnlabeledImages:
    """A folder of ``count`` unlabeled images and how :func:`read_unlabeled_images` reads it for a data set."""

    folder: str
    image_size: tuple
    grayscale: bool
    batch_size: int
    augment: bool
    seed: int
    count: int

    @classmethod
    def at(cls, folder, *, image_size=(96, 96), grayscale=False, batch_size=32, augment=True, seed=0):
        """The images under ``folder`` (:func:`list_unlabeled_images`: raises for a missing or empty folder)."""
        count = len(list_unlabeled_images(folder))
        return cls(str(folder), tuple(image_size), grayscale, batch_size, augment, seed, count)

    def read(self, oversample=None, oversampled_share=0.5):
        """The endless batches (:func:`read_unlabeled_images`, ``oversample`` as there)."""
        return read_unlabeled_images(self.folder, image_size=self.image_size, grayscale=self.grayscale,
                                     batch_size=self.batch_size, augment=self.augment, seed=self.seed,
                                     oversample=oversample, oversampled_share=oversampled_share)[0]


def split_sources(name, data_dir=None):
    """{"train": ..., "test": ...}: what each split of data set ``name`` is read from, the files checked to
    exist (FileNotFoundError naming what is missing), before anything is read.

    Layouts of ``data_dir``: person_folder ``{train,test}/{person,non_person}/`` (default: the bundled
    person96); person96_spatial the same folders of person96 windows, split by position instead
    (:func:`spatial_split`; each split is then a (paths, labels) pair); vww_tfrecords ``train.record-*`` and
    ``val.record-*``; vww_coco ``instances_{train,val}.json`` and the images in ``images/``; fashion_mnist the
    IDX files (default: Debian's dataset-fashion-mnist).
    """
    if name not in NAMES:
        raise ValueError(f"dataset must be one of {NAMES}, got {name!r}")
    if name == "fashion_mnist":
        root = pathlib.Path(data_dir or DEFAULT_FASHION_MNIST_DIR)
        return {split: [_find_idx(root, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
                for split, prefix in (("train", "train"), ("test", "t10k"))}
    root = pathlib.Path(data_dir) if data_dir else bundled_person96_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if name in ("person_folder", "person96_spatial"):
        sources = {split: root / split for split in ("train", "test")}
        missing = [str(path) for path in sources.values() if not path.is_dir()]
        if not missing and name == "person96_spatial":
            sources = spatial_split(root)
    elif name == "vww_tfrecords":
        sources = {split: str(root / f"{file}.record-*") for split, file in (("train", "train"), ("test", "val"))}
        missing = [pattern for pattern in sources.values() if not tf.io.gfile.glob(pattern)]
    else:
        sources = {split: root / f"instances_{file}.json" for split, file in (("train", "train"), ("test", "val"))}
        missing = [str(path) for path in [*sources.values(), root / "images"] if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{name} data in {root} lacks {', '.join(missing)} (the train and test splits)")
    return sources


def load_data(name, data_dir=None, *, image_size=96, grayscale=False, batch_size=32, limit=None, test_limit=None,
              calibration_size=256, seed=0, augment=True, unlabeled_dir=None):
    """Reads data set ``name`` (one of :data:`NAMES`, layouts in :func:`split_sources`) into a :class:`Data`.

    ``limit`` / ``test_limit`` use a seeded subset (for quick runs). ``unlabeled_dir``: a folder of unlabeled
    images for distillation (``Data.unlabeled``, read as :func:`read_unlabeled_images` says, ``batch_size`` of
    them per training batch).
    """
    sources = split_sources(name, data_dir)
    image_options = {"image_size": (image_size, image_size), "grayscale": grayscale}
    if name == "fashion_mnist":
        def read(split, **kwargs):
            return read_fashion_mnist(data_dir, split, **kwargs)
    elif name == "person_folder":
        def read(split, **kwargs):
            return read_image_folder(sources[split], **image_options, **kwargs)
    elif name == "person96_spatial":
        def read(split, *, batch_size, shuffle=False, augment=False, seed=0, limit=None):
            paths, labels = sources[split]
            return _read_files(paths, labels, f"{data_dir or 'person96'} ({split}, spatial)", VWW_CLASS_NAMES,
                               image_options["image_size"], grayscale, batch_size, shuffle, augment, seed, True,
                               limit, False)
    elif name == "vww_tfrecords":
        def read(split, **kwargs):
            return read_vww_tfrecords(sources[split], **image_options, **kwargs)
    else:
        def read(split, **kwargs):
            return read_coco_vww(sources[split], sources[split].parent / "images", **image_options, **kwargs)
    train, info = read("train", batch_size=batch_size, shuffle=True, augment=augment, seed=seed, limit=limit)
    test, test_info = read("test", batch_size=max(batch_size, 64), limit=test_limit, seed=seed)
    calibration_set, _ = read("train", batch_size=calibration_size, limit=calibration_size, seed=seed + 1)
    x, y = next(iter(calibration_set))
    num_examples = info.num_examples if info.num_examples is not None else limit
    if not num_examples:
        raise ValueError(f"cannot count the training examples of {info.source}; pass limit")
    description = f"{name} ({num_examples} train, {test_info.num_examples or test_limit} test images"
    unlabeled = None
    if unlabeled_dir is not None:
        unlabeled = UnlabeledImages.at(unlabeled_dir, **image_options, batch_size=batch_size, augment=augment,
                                       seed=seed)
        description += f", {unlabeled.count} unlabeled images in {unlabeled_dir}"
    return Data(train, test, (x.numpy(), y.numpy()), math.ceil(num_examples / batch_size), info.image_shape,
                info.num_classes, description + ")", unlabeled)


def list_unlabeled_images(folder):
    """The image files under ``folder`` (searched recursively), sorted; raises FileNotFoundError for a missing
    folder, ValueError for one without an image."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"unlabeled image folder {root} does not exist")
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"unlabeled image folder {root} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def read_unlabeled_images(data_dir, *, image_size=(96, 96), grayscale=False, batch_size=32, augment=True, seed=0,
                          validate=True, oversample=None, oversampled_share=0.5):
    """Every image under ``data_dir`` (:func:`list_unlabeled_images`; e.g. :func:`bundled_transfer_dir`),
    shuffled, augmented like training data, in endless batches of ``batch_size`` with the label :data:`UNLABELED`.

    ``oversample``: None, or a function from a batch of images (as read, unaugmented) to one boolean per image;
    the images it picks are then drawn for ``oversampled_share`` of the stream, the others for the rest (e.g.
    the few images a teacher calls "person" among photos of other scenes).

    Returns (dataset, info); raises FileNotFoundError for a missing folder, ValueError for one without a
    readable image, with fewer than one batch, or where ``oversample`` picks none or all of the images.
    """
    if oversample is not None and not 0.0 < oversampled_share < 1.0:
        raise ValueError(f"oversampled_share must be in (0, 1), got {oversampled_share!r}")
    root = pathlib.Path(data_dir)
    paths = list_unlabeled_images(root)
    source = f"{root} (unlabeled)"
    skipped = None
    if validate:
        readable, skipped = _check_readable(paths, source)
        paths = [p for p, ok in zip(paths, readable) if ok]
    if len(paths) < batch_size:
        raise ValueError(f"unlabeled image folder {root} has {len(paths)} readable images, fewer than one batch of "
                         f"{batch_size}")
    info = DatasetInfo(source, (), (*image_size, 1 if grayscale else 3), len(paths), skipped)

    def images(group, shuffle):
        dataset, _ = _read_files(group, [UNLABELED] * len(group), source, (), tuple(image_size), grayscale, 1,
                                 shuffle, False, seed, False, None, False)
        return dataset.unbatch()

    if oversample is None:
        stream = images(paths, True).repeat()
    else:
        picked = np.concatenate([np.asarray(oversample(x.numpy()), bool).reshape(-1)
                                 for x, _ in images(paths, False).batch(256)])
        if picked.all() or not picked.any():
            raise ValueError(f"oversample picked {int(picked.sum())} of the {len(paths)} images in {root}: it must "
                             f"pick some and leave some")
        groups = [[p for p, chosen in zip(paths, picked) if chosen == flag] for flag in (True, False)]
        stream = tf.data.Dataset.sample_from_datasets(
            [images(group, True).repeat() for group in groups], [oversampled_share, 1.0 - oversampled_share],
            seed=seed)
    return _finish(stream, batch_size, augment, seed, True, tf.data.experimental.AutoShardPolicy.DATA), info


def mix_unlabeled(labeled, unlabeled):
    """``labeled``'s batches, each with a batch of ``unlabeled`` appended (images and int32 labels); as long
    as ``labeled``."""
    def concatenate(batch, extra):
        return (tf.concat([batch[0], extra[0]], 0),
                tf.concat([tf.cast(batch[1], tf.int32), tf.cast(extra[1], tf.int32)], 0))

    return tf.data.Dataset.zip((labeled, unlabeled)).map(concatenate, num_parallel_calls=_AUTOTUNE)


def _list_images(folder):
    return sorted(str(e.path) for e in os.scandir(folder)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def _random_subset(count, limit, seed):
    """Indices of ``limit`` of ``count`` examples, chosen by ``seed``, in their original order."""
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


def _find_idx(data_dir, name):
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name}[.gz] not found in {data_dir} (Debian: apt-get install dataset-fashion-mnist)")


def pixel_levels(grayscale=False):
    """The float32 model input of each 8-bit pixel value 0..255 as these readers preprocess it (a uniform
    image of that value, RGB or its grayscale luminance): what a camera pixel must become on the device."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    image = _decode_image(tf.io.encode_png(levels), (16, 16), grayscale)
    return image.numpy()[..., 0].reshape(256).astype(np.float32)


def _decode_image(contents, image_size, grayscale):
    """Encoded bytes -> float32 (height, width, 1 or 3) in [0, 1]; raises on unreadable data."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    # Bilinear with antialiasing keeps values in [0, 1] and returns same-size images unchanged.
    image = tf.image.resize(image, image_size, antialias=True)
    if grayscale:
        image = tf.image.rgb_to_grayscale(image)
    return image


def _read_files(paths, labels, source, class_names, image_size, grayscale, batch_size, shuffle, augment, seed,
                validate, limit, drop_remainder):
    """The pipeline shared by the folder and COCO readers: a list of image files with their labels."""
    if limit is not None:
        keep = _random_subset(len(paths), limit, seed)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    skipped = None
    if validate:
        readable, skipped = _check_readable(paths, source)
        paths = [p for p, ok in zip(paths, readable) if ok]
        labels = [label for label, ok in zip(labels, readable) if ok]
        if not paths:
            raise ValueError(f"no readable image in {source}")

    def load(path, label):
        return _decode_image(tf.io.read_file(path), image_size, grayscale), label

    dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
    if shuffle:  # names, not pixels: the buffer holds the whole list cheaply.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=_AUTOTUNE).ignore_errors(log_warning=True)
    info = DatasetInfo(source, class_names, (*image_size, 1 if grayscale else 3), len(paths), skipped)
    return _finish(dataset, batch_size, augment, seed, drop_remainder,
                   tf.data.experimental.AutoShardPolicy.DATA), info


def _decoded_shape(contents):
    # Returning the decoded shape makes the pass depend on the decode: graph optimizations prune a
    # decode whose result is unused, and the resized shape is a constant.
    return tf.shape(tf.io.decode_image(contents, channels=3, expand_animations=False))


def _check_readable(paths, source):
    """(whether each path's image decodes, the paths that do not), the latter logged as skipped."""
    readable = _find_readable(paths)
    skipped = tuple(p for p, ok in zip(paths, readable) if not ok)
    _report_skipped(skipped, source)
    return readable, skipped


def _find_readable(paths):
    """For each path, whether the image decodes (one parallel tf.data pass)."""
    def check(index, path):
        return index, _decoded_shape(tf.io.read_file(path))

    indices = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    indices = indices.map(check, num_parallel_calls=_AUTOTUNE, deterministic=False).ignore_errors()
    readable = np.zeros(len(paths), bool)
    for batch, _ in indices.batch(4096).as_numpy_iterator():
        readable[batch] = True
    return readable


def _validate_records(files, limit):
    """Counts the decodable records of ``files`` (the first ``limit``) and names the others."""
    def enumerate_file(file_index):
        return tf.data.TFRecordDataset(tf.gather(files, file_index)).enumerate().map(
            lambda record_index, record: (file_index, record_index, record))

    def check(file_index, record_index, record):
        example = tf.io.parse_single_example(record, _TFRECORD_FEATURES)
        return file_index, record_index, _decoded_shape(example["image/encoded"])

    records = tf.data.Dataset.range(len(files)).flat_map(enumerate_file)
    if limit is not None:
        records = records.take(limit)
    every = {tuple(r) for r in records.map(lambda f, i, _: tf.stack([f, i])).as_numpy_iterator()}
    decoded = records.map(check, num_parallel_calls=_AUTOTUNE, deterministic=False).ignore_errors()
    good = {(int(f), int(i)) for f, i, _ in decoded.as_numpy_iterator()}
    skipped = tuple(f"{files[f]}[{i}]" for f, i in sorted(every - good))
    return len(good), skipped


def _report_skipped(skipped, source):
    if skipped:
        named = ", ".join(skipped[:_NAMED_IN_WARNING])
        more = f" and {len(skipped) - _NAMED_IN_WARNING} more" if len(skipped) > _NAMED_IN_WARNING else ""
        logger.warning("%s: skipped %d unreadable images: %s%s", source, len(skipped), named, more)


def _finish(dataset, batch_size, augment, seed, drop_remainder, shard_policy):
    """Batches, augments (seeded per batch, new draws each epoch) and prefetches."""
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: (augmentation.mlperf_augment(batch[0], batch_seed), batch[1]),
            num_parallel_calls=_AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = shard_policy
    return dataset.with_options(options).prefetch(_AUTOTUNE)
