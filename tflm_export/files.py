"""Output that a reader sees whole or not at all: single files (:func:`write_atomic`) and whole folders
(:func:`write_folder`). Created files and folders get the modes of the process umask, like any other tool."""

import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, data):
    """Writes ``data`` (bytes or str) to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(handle, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_folder(path, files):
    """Makes ``path`` a folder holding exactly ``files`` ({relative path: bytes or str}).

    Everything is written into a staging folder beside ``path``, which then takes the place of ``path`` by
    renames; the previous folder is removed only after that. Any failure on the way (an exception,
    including the SystemExit that :func:`tflm_export.termination.sigterm_raises` makes of SIGTERM) removes
    the staging folder and leaves the previous ``path`` (or none) as it was.
    """
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{base}.", suffix=".staging")
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
        for relative, data in files.items():
            target = os.path.join(staging, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
                f.flush()
                os.fsync(f.fileno())
        _replace_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_folder(new, path):
    """Renames folder ``new`` to ``path``, moving a previous ``path`` aside first and deleting it after."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    retired = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".old")
    previous = os.path.join(retired, "previous")
    os.rename(path, previous)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(previous, path)
        os.rmdir(retired)
        raise
    shutil.rmtree(retired, ignore_errors=True)
