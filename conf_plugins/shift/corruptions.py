"""Standard image corruptions for calibration under distribution shift.

The 15 corruptions × 5 severities of Hendrycks & Dietterich (ICLR 2019), as Michaelis et al.
(2019, "Benchmarking Robustness in Object Detection") apply them to COCO / Cityscapes
(COCO-C, Cityscapes-C), through the ``imagecorruptions`` module (installed by the maintained
fork ``imagecorruptions-imaug``, see requirements/pins.txt). Four more corruptions of the
package ("speckle_noise", "gaussian_blur", "spatter", "saturate") are the held-out set of
that protocol and are accepted by name too.

Each corruption draws random numbers; :func:`corrupt_image` makes it a function of the image
by seeding numpy (and the two corruptions with their own generator) from a key of the image
(by default its bytes; mmseg's transform passes the file name), the corruption and the
severity, and restores numpy's global random state afterwards. So the same image gets the
same corrupted pixels in every run, process and worker.
"""

import hashlib

import numpy as np

BENCHMARK = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = BENCHMARK + HELD_OUT
SEVERITIES = (1, 2, 3, 4, 5)
OWN_GENERATOR = ("impulse_noise", "glass_blur")  # take a seed argument, ignore numpy's global state
MIN_SIDE = 32  # imagecorruptions refuses smaller images


def check_corruption(name, severity) -> tuple:
    """``(name, severity)`` validated; ValueError naming the valid values otherwise."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or int(severity) not in SEVERITIES
    ):
        raise ValueError(f"corruption severity must be an integer in 1-5, got {severity!r}")
    return name, int(severity)


def parse_corruptions(names) -> tuple:
    """A list of corruption names, ``"benchmark"`` (the 15), ``"held_out"`` (the 4) or
    ``"all"`` (the 19) -> names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for name in names:
        out += list({"benchmark": BENCHMARK, "held_out": HELD_OUT, "all": CORRUPTIONS}.get(name, [name]))
    for name in out:
        check_corruption(name, 1)
    return tuple(dict.fromkeys(out))


def _seed(key, name: str, severity: int) -> int:
    if isinstance(key, np.ndarray):
        key = hashlib.sha256(np.ascontiguousarray(key).tobytes()).hexdigest()
    digest = hashlib.sha256(f"{key}|{name}|{severity}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt_image(image: np.ndarray, name: str, severity: int, key=None) -> np.ndarray:
    """``image`` (H×W×3 RGB or H×W grey, uint8) with corruption ``name`` at ``severity``:
    an H×W×3 uint8 RGB array (grey images are converted to RGB first).

    ``key`` (e.g. the image's file name) fixes the random draws; by default the image's
    bytes do. Raises ValueError for unknown names, severities outside 1–5, non-uint8 images,
    other channel counts and images smaller than 32 pixels on a side.
    """
    from imagecorruptions import corrupt

    name, severity = check_corruption(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"corrupt_image expects a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"corrupt_image expects an H×W×3 RGB or H×W grey image, got shape {image.shape}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"image of {image.shape[0]}×{image.shape[1]} pixels is too small for "
            f"the corruptions (each side must be at least {MIN_SIDE})"
        )
    state = np.random.get_state()
    try:
        seed = _seed(image if key is None else key, name, severity)
        np.random.seed(seed)
        # two corruptions draw from their own generator unless given a seed
        extra = {"seed": seed} if name in OWN_GENERATOR else {}
        out = corrupt(image, corruption_name=name, severity=severity, **extra)
    finally:
        np.random.set_state(state)
    out = np.asarray(out)
    if out.shape != image.shape:
        raise RuntimeError(
            f"corruption {name!r} returned shape {out.shape} for an image of shape {image.shape}"
        )
    return np.clip(out, 0, 255).astype(np.uint8)
