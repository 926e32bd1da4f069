"""IDX files (the MNIST and Fashion-MNIST format), gzipped or not, as numpy arrays."""

import gzip

import numpy as np


def read_idx(path):
    """Reads one IDX file (the MNIST format; ``.gz`` is decompressed) into a numpy array."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: {len(data) - offset} data bytes, its header says shape {shape} of {dtype}")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape)
