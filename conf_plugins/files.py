"""Writing outputs without losing what the user has: refuse to overwrite, write atomically."""

import os
import tempfile


def refuse_overwrite(path, force: bool):
    """FileExistsError if ``path`` exists and ``force`` is not set."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")


def write_atomically(path, write):
    """``write(tmp_path)`` then rename onto ``path``: a failure leaves no partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="tmp_", suffix="_" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path, data):
    """``data`` as indented JSON at ``path``, atomically (:func:`write_atomically`)."""
    import json

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)

    write_atomically(path, dump)
