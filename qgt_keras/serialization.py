"""Registration of qgt_keras objects with tf_keras, so saved models load without ``custom_objects``."""

import tf_keras as keras

PACKAGE = "qgt_keras"


def register(cls):
    """Class decorator: registers ``cls`` as "qgt_keras>Name" and under its bare name.

    The bare name is needed for .h5 files: tf_keras' legacy loader looks nested objects (a layer's
    regularizer) up by their bare class name.
    """
    cls = keras.saving.register_keras_serializable(package=PACKAGE)(cls)
    keras.saving.get_custom_objects().setdefault(cls.__name__, cls)
    return cls
