"""Registration of qgt_keras objects with tf_keras, so saved models load without ``custom_objects``, and
:func:`load_model`, which loads a model file or says in one line why it cannot.

Importing any qgt_keras module registers the classes; a process that never imports qgt_keras cannot load
a QGT model (plain tf_keras fails with "'str' object is not callable").
"""

import json
import os
import zipfile

import tf_keras as keras

PACKAGE = "qgt_keras"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MESSAGE_CHARACTERS = 300  # Keras errors quote whole model configs; a message keeps this much


class ModelFileError(ValueError):
    """A file that is not a tf_keras model this package can load; the message names the file and why."""


def register(cls):
    """Class decorator: registers ``cls`` as "qgt_keras>Name" and under its bare name.

    The bare name is needed for .h5 files: tf_keras' legacy loader looks nested objects (a layer's
    regularizer) up by their bare class name.
    """
    cls = keras.saving.register_keras_serializable(package=PACKAGE)(cls)
    keras.saving.get_custom_objects().setdefault(cls.__name__, cls)
    return cls


def _saved_metadata(path):
    """(keras_version, model config as JSON text) of a .keras zip or an .h5 file; ModelFileError otherwise."""
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                metadata = json.loads(archive.read("metadata.json"))
                return str(metadata.get("keras_version", "")), archive.read("config.json").decode("utf-8")
        except (KeyError, ValueError, zipfile.BadZipFile) as error:
            raise ModelFileError(f"{path} is a zip file but not a .keras model ({error})") from error
    if head == _HDF5_SIGNATURE:
        import h5py  # a tf_keras dependency

        with h5py.File(path, "r") as f:
            version, config = f.attrs.get("keras_version", ""), f.attrs.get("model_config")
        if config is None:
            raise ModelFileError(f"{path} is an HDF5 file without a model config (weights only?); save the "
                                 "whole model with model.save()")
        decode = lambda value: value.decode("utf-8") if isinstance(value, bytes) else str(value)  # noqa: E731
        return decode(version), decode(config)
    raise ModelFileError(f"{path} is not a Keras model file: neither a .keras zip archive nor an HDF5 .h5 file")


def _unregistered_classes(config_text):
    """The qgt_keras classes a model config names that tf_keras cannot find."""
    names = set()

    def visit(node):
        if isinstance(node, dict):
            # .keras configs name a class in "registered_name", .h5 configs in "class_name"
            names.update(value for value in (node.get("registered_name"), node.get("class_name"))
                         if isinstance(value, str) and value.startswith(PACKAGE + ">"))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(json.loads(config_text))
    return sorted(name for name in names if keras.saving.get_registered_object(name) is None)


def load_model(path, compile=False):
    """Loads a tf_keras model (.keras or .h5) saved with or without qgt_keras layers.

    Raises FileNotFoundError for a missing file and :class:`ModelFileError` naming the file for a file that
    is not a model, one saved with Keras 3, one that names qgt_keras classes this version does not define,
    or one tf_keras fails to load (with the start of tf_keras' message).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    if not os.path.isdir(path):  # a SavedModel folder goes straight to tf_keras
        version, config = _saved_metadata(path)
        if version.startswith("3"):
            raise ModelFileError(f"{path} was saved with Keras {version}: re-save it with tf_keras "
                                 "(`import tf_keras as keras`), the Keras 2 API that QGT and its exporter use")
        missing = _unregistered_classes(config)
        if missing:
            raise ModelFileError(f"{path} uses {', '.join(missing)}, which this version of {PACKAGE} does not "
                                 "define (importing qgt_keras registers every class it has)")
    try:
        return keras.models.load_model(path, compile=compile)
    except (ValueError, TypeError, KeyError, OSError) as error:
        message = " ".join(str(error).split())[:_MESSAGE_CHARACTERS]
        raise ModelFileError(f"tf_keras cannot load {path}: {type(error).__name__}: {message}") from error
