"""Checks shared by the tests of the packaged-photo sets (data/ood, data/transfer)."""

import collections


def assert_crops_are_build_windows(manifest, sources, build):
    """Every photo of ``sources`` gives exactly the crops its build script cuts: the windows of
    ``build.crop_windows``, named by ``build.crop_file_name``, each manifest row repeating its photo's
    provenance and the registry of its archive."""
    by_photo = collections.defaultdict(list)
    for row in manifest:
        by_photo[row["photo_id"]].append(row)
    assert set(by_photo) == set(sources)
    for photo_id, rows in by_photo.items():
        source = sources[photo_id]
        for row in rows:
            window = int(row["x0"]), int(row["y0"]), int(row["size"])
            assert row["file"].split("/")[-1] == build.crop_file_name(photo_id, *window)
            assert row["registry"] == build.ARCHIVE_REGISTRY[source["archive"]]
            for field, source_field in (("package", "package"), ("version", "version"), ("archive", "archive"),
                                        ("path", "path"), ("license", "license"), ("source_sha256", "sha256")):
                assert row[field] == source[source_field], (photo_id, field)
        boxes = sorted((int(r["x0"]), int(r["y0"]), int(r["size"])) for r in rows)
        assert boxes == sorted(build.crop_windows(int(source["width"]), int(source["height"]))), photo_id
