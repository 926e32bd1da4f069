"""person96's spatial split (qgt_keras.datasets.spatial_split, load_data("person96_spatial")): test windows at
positions no training window covers."""

import collections

import pytest

from qgt_keras import datasets


@pytest.fixture(scope="module")
def split():
    return datasets.spatial_split()


def test_no_window_position_is_in_both_splits_and_no_pixel_is_shared(split):
    positions = {name: {datasets.window_origin(path) for path in paths} for name, (paths, _) in split.items()}
    assert positions["train"] and positions["test"] and not positions["train"] & positions["test"]
    window = datasets.PERSON96_WINDOW
    for train_x, train_y in positions["train"]:
        for test_x, test_y in positions["test"]:
            overlap_x = min(train_x, test_x) + window > max(train_x, test_x)
            overlap_y = min(train_y, test_y) + window > max(train_y, test_y)
            assert not (overlap_x and overlap_y), ((train_x, train_y), (test_x, test_y))


def test_every_frame_of_both_folders_is_used_and_labels_follow_the_class_folders(split):
    root = datasets.bundled_person96_dir()
    every = [p for folder in ("train", "test") for p in (root / folder).rglob("*.jpg")]
    used = [path for paths, _ in split.values() for path in paths]
    assert len(used) == len(set(used)) < len(every)  # the windows crossing the boundary are left out
    left_out = {str(p) for p in every} - set(used)
    assert {datasets.window_origin(p)[0] for p in left_out} == {
        x for x in range(0, 768, 96) if x < datasets.SPATIAL_SPLIT_X < x + datasets.PERSON96_WINDOW}
    for paths, labels in split.values():
        for path, label in zip(paths, labels):
            assert f"/{datasets.VWW_CLASS_NAMES[label]}/" in path
    counts = {name: collections.Counter(labels) for name, (_, labels) in split.items()}
    assert min(counts["train"].values()) > 500 and min(counts["test"].values()) > 150


def test_load_data_reads_the_split(split):
    data = datasets.load_data("person96_spatial", image_size=16, batch_size=64, augment=False)
    assert data.description.startswith(f"person96_spatial ({len(split['train'][0])} train, "
                                       f"{len(split['test'][0])} test images)")
    assert data.input_shape == (16, 16, 3) and data.num_classes == 2


def test_a_file_that_is_not_a_window_is_named():
    with pytest.raises(ValueError, match=r"holiday\.jpg: not a person96 window name"):
        datasets.window_origin("some/holiday.jpg")
