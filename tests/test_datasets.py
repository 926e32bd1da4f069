"""Tests of the data readers on small fixtures written here (folders of JPEGs, TFRecords, a COCO json, IDX)."""

import gzip
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from qgt_keras import augmentation, datasets

# Fixture images encode their class in their brightness, so label pairing survives shuffling checks.
BRIGHT, DARK = 200, 40


def _write_jpeg(path, value, size=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.clip(value + rng.integers(-20, 20, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _jpeg_bytes(path, value, seed=0):
    _write_jpeg(path, value, seed=seed)
    return path.read_bytes()


def _make_folder(root, num_person=3, num_non_person=2):
    for name, count, value in (("person", num_person, BRIGHT), ("non_person", num_non_person, DARK)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            _write_jpeg(root / name / f"{i}.jpg", value, seed=i)
    return root


def _collect(dataset):
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(images), np.concatenate(labels)


def _assert_labels_match_brightness(images, labels):
    np.testing.assert_array_equal(labels, (images.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32))


def test_image_folder_reads_sorted_classes_resized_and_scaled(tmp_path):
    dataset, info = datasets.read_image_folder(_make_folder(tmp_path), image_size=(32, 32), batch_size=2,
                                               shuffle=True, seed=3)
    images, labels = _collect(dataset)
    assert info.class_names == ("non_person", "person") and info.num_classes == 2
    assert info.image_shape == (32, 32, 3) and info.num_examples == 5 and info.skipped == ()
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels) == [0, 0, 1, 1, 1]
    _assert_labels_match_brightness(images, labels)


def test_image_folder_grayscale_and_limit(tmp_path):
    dataset, info = datasets.read_image_folder(_make_folder(tmp_path), image_size=(24, 24), grayscale=True,
                                               limit=3)
    images, _ = _collect(dataset)
    assert images.shape == (3, 24, 24, 1) and info.image_shape == (24, 24, 1) and info.num_examples == 3


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
    root = _make_folder(tmp_path, 6, 6)

    def epochs(seed):
        dataset, _ = datasets.read_image_folder(root, image_size=(8, 8), batch_size=12, shuffle=True, seed=seed)
        return [_collect(dataset)[1] for _ in range(2)]

    first, again = epochs(1), epochs(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])  # a new order each epoch
    assert not np.array_equal(first[0], epochs(2)[0])


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path, caplog):
    root = _make_folder(tmp_path)
    good = (root / "person" / "0.jpg").read_bytes()
    (root / "person" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "non_person" / "garbage.jpg").write_bytes(b"not an image at all")

    dataset, info = datasets.read_image_folder(root, image_size=(16, 16), batch_size=4)
    assert sorted(pathlib.Path(p).name for p in info.skipped) == ["garbage.jpg", "truncated.jpg"]
    assert info.num_examples == 5 and len(_collect(dataset)[1]) == 5
    assert "skipped 2 unreadable images" in caplog.text

    # Without the validation pass the pipeline still drops them instead of failing mid-epoch.
    dataset, info = datasets.read_image_folder(root, image_size=(16, 16), batch_size=4, validate=False)
    assert info.skipped is None and info.num_examples == 7
    assert len(_collect(dataset)[1]) == 5


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.read_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class subfolders"):
        datasets.read_image_folder(tmp_path)
    (tmp_path / "person").mkdir()
    with pytest.raises(ValueError, match=r"person has no images"):
        datasets.read_image_folder(tmp_path)


def test_all_images_unreadable_is_an_error(tmp_path):
    (tmp_path / "person").mkdir()
    (tmp_path / "person" / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable image"):
        datasets.read_image_folder(tmp_path)


def test_augmentation_keeps_shapes_and_range_and_is_seeded():
    images = tf.random.stateless_uniform((4, 20, 24, 3), (1, 2))
    out = augmentation.mlperf_augment(images, tf.constant([5, 6]))
    assert out.shape == images.shape
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
    assert float(tf.reduce_max(tf.abs(out - images))) > 0.1
    np.testing.assert_array_equal(out.numpy(), augmentation.mlperf_augment(images, tf.constant([5, 6])).numpy())


def test_augmentation_in_reader(tmp_path):
    dataset, _ = datasets.read_image_folder(_make_folder(tmp_path), image_size=(16, 16), batch_size=5,
                                            augment=True, seed=1)
    images, labels = _collect(dataset)
    assert images.shape == (5, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 1.0
    _assert_labels_match_brightness(images, labels)


def _example(encoded, label):
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def test_vww_tfrecords(tmp_path):
    person = _jpeg_bytes(tmp_path / "p.jpg", BRIGHT)
    background = _jpeg_bytes(tmp_path / "n.jpg", DARK)
    contents = [[(person, 1), (background, 0), (b"corrupt", 1)], [(background, 0), (person, 1)]]
    for shard, records in enumerate(contents):
        with tf.io.TFRecordWriter(str(tmp_path / f"train.record-{shard:05d}-of-00002")) as writer:
            for encoded, label in records:
                writer.write(_example(encoded, label))

    pattern = str(tmp_path / "train.record-?????-of-00002")
    dataset, info = datasets.read_vww_tfrecords(pattern, image_size=(16, 16), batch_size=3, shuffle=True)
    images, labels = _collect(dataset)
    assert info.num_examples == 4 and len(info.skipped) == 1 and info.skipped[0].endswith("-00000-of-00002[2]")
    assert images.shape == (4, 16, 16, 3) and sorted(labels) == [0, 0, 1, 1]
    _assert_labels_match_brightness(images, labels)

    dataset, info = datasets.read_vww_tfrecords(pattern, image_size=(16, 16), limit=2, grayscale=True)
    images, labels = _collect(dataset)
    assert images.shape == (2, 16, 16, 1) and list(labels) == [1, 0] and info.num_examples == 2

    with pytest.raises(FileNotFoundError, match="val.record"):
        datasets.read_vww_tfrecords(str(tmp_path / "val.record-*"))


def test_coco_vww(tmp_path):
    images_dir = tmp_path / "all2014"
    images_dir.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    for image_id in range(5):
        has_person = image_id % 2 == 0
        name = f"COCO_{image_id:012d}.jpg"
        _write_jpeg(images_dir / name, BRIGHT if has_person else DARK, seed=image_id)
        coco["images"].append({"id": image_id, "file_name": name, "height": 40, "width": 52})
        if has_person:  # two boxes on one image: still one person label
            coco["annotations"] += [{"id": 10 * image_id + k, "image_id": image_id, "category_id": 1,
                                     "bbox": [0, 0, 10, 10]} for k in range(2)]
    coco["images"].append({"id": 99, "file_name": "missing.jpg"})
    annotations = tmp_path / "instances_train.json"
    annotations.write_text(json.dumps(coco))

    dataset, info = datasets.read_coco_vww(annotations, images_dir, image_size=(16, 16), batch_size=2)
    images, labels = _collect(dataset)
    assert info.class_names == ("non_person", "person") and info.num_examples == 5
    assert [pathlib.Path(p).name for p in info.skipped] == ["missing.jpg"]
    assert list(labels) == [1, 0, 1, 0, 1]
    _assert_labels_match_brightness(images, labels)

    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        datasets.read_coco_vww(tmp_path / "instances_val.json", images_dir)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)  # one gzipped, one plain
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)

    dataset, info = datasets.read_fashion_mnist(tmp_path, "test", batch_size=4)
    x, y = _collect(dataset)
    assert info.num_classes == 10 and info.image_shape == (28, 28, 1) and info.num_examples == 7
    np.testing.assert_allclose(x[..., 0], images / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y, labels)

    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.read_fashion_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        datasets.read_fashion_mnist(tmp_path, "validation")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(3))
    with pytest.raises(ValueError, match="header says"):
        datasets.read_fashion_mnist(tmp_path, "test")


@pytest.mark.skipif(not os.path.isdir(datasets.DEFAULT_FASHION_MNIST_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_default_dir():
    dataset, info = datasets.read_fashion_mnist(split="test", limit=64, batch_size=64, augment=True)
    x, y = _collect(dataset)
    assert x.shape == (64, 28, 28, 1) and set(y) <= set(range(10)) and info.num_examples == 64


def test_bundled_person96_layout():
    root = datasets.bundled_person96_dir()
    assert {p.name for p in (root / "train").iterdir() if p.is_dir()} == {"person", "non_person"}
    dataset, info = datasets.read_image_folder(root / "test", limit=8, batch_size=8)
    x, _ = _collect(dataset)
    assert x.shape == (8, 96, 96, 3) and info.skipped == ()


def _make_unlabeled(root, count, bright=()):
    (root / "nested").mkdir(parents=True)
    for i in range(count):
        _write_jpeg(root / ("nested" if i % 2 else "") / f"u{i}.jpg", BRIGHT if i in bright else DARK, seed=i)
    return root


def test_unlabeled_images_come_endlessly_in_full_batches_labeled_unlabeled(tmp_path):
    root = _make_unlabeled(tmp_path / "extra", 5)
    dataset, info = datasets.read_unlabeled_images(root, image_size=(24, 24), batch_size=2, augment=False)
    assert info.num_examples == 5 and info.skipped == ()  # the nested folder is read too
    batches = [(x.numpy(), y.numpy()) for x, y in dataset.take(7)]  # 7 batches of 2 from 5 images: it repeats
    assert all(x.shape == (2, 24, 24, 3) for x, _ in batches)
    assert all((y == datasets.UNLABELED).all() for _, y in batches)
    seen = np.concatenate([x for x, _ in batches]).reshape(14, -1)
    assert len(np.unique(seen.round(3), axis=0)) == 5  # every image, each once per pass


def test_oversampled_images_make_up_their_share_of_the_stream(tmp_path):
    root = _make_unlabeled(tmp_path / "extra", 40, bright=(3, 17))  # 2 bright images of 40

    def bright(images):
        return images.mean(axis=(1, 2, 3)) > 0.5

    dataset, _ = datasets.read_unlabeled_images(root, image_size=(16, 16), batch_size=40, augment=False,
                                                oversample=bright, oversampled_share=0.4)
    images = np.concatenate([x.numpy() for x, _ in dataset.take(10)])
    assert 0.33 < bright(images).mean() < 0.47  # 400 draws at 40%; as they come it would be 5%
    with pytest.raises(ValueError, match="oversample picked 0 of the 40 images"):
        datasets.read_unlabeled_images(root, oversample=lambda x: np.zeros(len(x), bool))
    with pytest.raises(ValueError, match="oversampled_share must be in"):
        datasets.read_unlabeled_images(root, oversample=bright, oversampled_share=1.0)


def test_unlabeled_images_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        datasets.read_unlabeled_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.* holds no image"):
        datasets.read_unlabeled_images(tmp_path / "empty")
    root = _make_unlabeled(tmp_path / "few", 3)
    with pytest.raises(ValueError, match="3 readable images, fewer than one batch of 4"):
        datasets.read_unlabeled_images(root, batch_size=4)


def test_load_data_appends_a_batch_of_unlabeled_images_to_each_training_batch(tmp_path):
    root = tmp_path / "person"
    _make_folder(root / "train", num_person=3, num_non_person=3)
    _make_folder(root / "test", num_person=2, num_non_person=2)
    extra = _make_unlabeled(tmp_path / "extra", 4)
    data = datasets.load_data("person_folder", root, image_size=24, batch_size=2, augment=False,
                              calibration_size=2, unlabeled_dir=extra)
    assert f"4 unlabeled images in {extra}" in data.description
    assert data.unlabeled == datasets.UnlabeledImages(str(extra), (24, 24), False, 2, False, 0, 4)
    mixed = list(datasets.mix_unlabeled(data.train, data.unlabeled.read()))
    assert len(mixed) == data.steps_per_epoch == 3  # as long as the labeled data
    for x, y in mixed:
        assert x.shape == (4, 24, 24, 3)
        assert set(y.numpy()[:2]) <= {0, 1} and (y.numpy()[2:] == datasets.UNLABELED).all()
    assert datasets.load_data("person_folder", root, image_size=24, batch_size=2, calibration_size=2).unlabeled is None


_MIRRORED_FIT = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from qgt_keras import datasets, models
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dataset, info = datasets.read_image_folder(sys.argv[1], image_size=(32, 32), batch_size=4, shuffle=True,
                                               augment=True)
    with strategy.scope():
        model = models.small_cnn(info.image_shape, info.num_classes)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(dataset, epochs=1, verbose=0)
    print("replicas", strategy.num_replicas_in_sync, "loss", history.history["loss"][0])
""")


def test_fit_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    # Logical devices must be set before TensorFlow initializes: run in a fresh interpreter.
    root = _make_folder(tmp_path / "data", 4, 4)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", _MIRRORED_FIT, str(root)], capture_output=True, text=True,
                            env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 loss" in result.stdout


@pytest.mark.parametrize("name, files, missing", [
    ("vww_tfrecords", ["train.record-00000-of-00001"], "val.record-*"),
    ("vww_coco", ["instances_train.json", "instances_val.json"], "images"),
    ("person_folder", ["train/person/a.jpg"], "test"),
])
def test_named_data_sets_need_both_splits_before_anything_is_read(tmp_path, name, files, missing):
    for file in files:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"{name} data in {tmp_path} lacks .*{missing}"):
        datasets.load_data(name, tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        datasets.split_sources("imagenet")
