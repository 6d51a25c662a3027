"""CIFAR-10 from a local copy of its official python version, as torch tensors; nothing is downloaded.

The user supplies the folder `cifar-10-batches-py` (from cifar-10-python.tar.gz,
https://www.cs.toronto.edu/~kriz/cifar.html), or a folder containing it:

    data_batch_1 .. data_batch_5   training images, 10000 each in the official release
    test_batch                     test images, 10000
    batches.meta                   {b"label_names": 10 class names, ...}

Each batch is a Python 2 pickle of {b"data": uint8 (n, 3072), b"labels": n ints in 0..9,
b"batch_label": bytes, b"filenames": n bytes}; a row of b"data" holds the red, green and blue
32 x 32 planes, each row-major, so reshaping to (n, 3, 32, 32) gives NCHW images.

Preprocessing, as in the paper (no augmentation): pixels scaled to [0, 1] by / 255, then each
channel c standardised with the *training-set* mean and standard deviation of that channel:

    x[:, c] = (pixel / 255 - mean_c) / std_c      mean_c, std_c over all 50000 * 32 * 32 training
                                                  pixels of channel c; std population (ddof = 0)

applied unchanged to the test set. mean_c and std_c are computed exactly, from integer histograms
of the uint8 pixels, then the images are converted to float32.

Safety: the official files are pickles, and unpickling can run arbitrary code. They are read with a
restricted unpickler (`encoding="bytes"`, as Python 2 strings require) whose only importable globals
are numpy's array and dtype reconstructors; any other global is refused as a corrupt file. That keeps
loading a downloaded folder as safe as parsing numbers, at the cost of ~15 lines, so we chose it over
a plain `pickle.load`.
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError
from .data import Dataset

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
N_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # (channels, height, width)
ROW_LENGTH = 3 * 32 * 32  # one image flattened: R plane, G plane, B plane
_HISTOGRAM_CHUNK = 4096  # images per bincount call: a 32 MB int64 temporary per channel
SOURCE = "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"

# numpy's own reconstructors, taken from live objects so no deprecated module path is imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct (protocol <= 4)
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer (protocol 5)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the official files (numpy 1.x names)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # re-pickled by numpy 2
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list: not a CIFAR-10 batch, possibly hostile."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builtin containers, numbers, bytes and numpy arrays; every other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"it references {module}.{name}, which a CIFAR-10 batch never does") from None


def _corrupt(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"CIFAR-10 file {path} is not a valid python-version CIFAR-10 batch ({reason}); "
                       f"re-extract {SOURCE} and point data.root at the result")


def _unpickle(path: Path) -> dict:
    """The file's dict, read by the restricted unpickler; every failure as a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"CIFAR-10 file {path} is missing; {path.parent} must hold "
                          f"{', '.join(TRAIN_FILES)}, {TEST_FILE} and {META_FILE}: re-extract {SOURCE}")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"CIFAR-10 file {path} cannot be read ({error.strerror}); fix its permissions") from None
    try:
        content = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as error:
        raise _corrupt(path, str(error)) from None
    except Exception as error:  # noqa: BLE001 - any failure to parse these bytes means a damaged file
        raise _corrupt(path, f"unpickling failed: {type(error).__name__}: {error}") from None
    if not isinstance(content, dict):
        raise _corrupt(path, f"it holds a {type(content).__name__}, not a dict")
    return content


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (n, 3072), labels int64 (n,)) of one batch file, validated."""
    content = _unpickle(path)
    missing = [key for key in (b"data", b"labels") if key not in content]
    if missing:
        raise _corrupt(path, f"keys {missing} missing; found {sorted(map(repr, content))}")
    data, labels = content[b"data"], content[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == ROW_LENGTH and data.shape[0] >= 1):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, f"b'data' must be uint8 (n, {ROW_LENGTH}), found {found}")
    if not (isinstance(labels, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
        raise _corrupt(path, "b'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise _corrupt(path, f"{len(labels)} labels for {data.shape[0]} images")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and not (labels.min() >= 0 and labels.max() < N_CLASSES):
        raise _corrupt(path, f"labels span {labels.min()}..{labels.max()}, outside 0..{N_CLASSES - 1}")
    return data, labels


def _check_meta(path: Path) -> None:
    names = _unpickle(path).get(b"label_names")
    if not (isinstance(names, (list, tuple)) and len(names) == N_CLASSES):
        raise _corrupt(path, f"b'label_names' must list {N_CLASSES} classes (is this CIFAR-100?)")


def locate_cifar10(root: Path | str) -> Path:
    """The `cifar-10-batches-py` folder: `root` itself, or `root / cifar-10-batches-py`.

    Checks only that the folder exists (cheap, for validating a config before training starts).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ConfigError(f"CIFAR-10 root {root} does not exist; download {SOURCE}, extract it, and point "
                          f"data.root at the folder holding {FOLDER}")
    if not root.is_dir():
        raise ConfigError(f"CIFAR-10 root {root} is a file, not a folder; extract it (tar xzf) and point "
                          f"data.root at the folder holding {FOLDER}")
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if root.name == FOLDER or (root / TRAIN_FILES[0]).exists():
        return root
    raise ConfigError(f"CIFAR-10 root {root} holds no {FOLDER} folder (and no {TRAIN_FILES[0]}); extract {SOURCE} "
                      f"into it, or point data.root at the folder holding {FOLDER}")


def _channel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of pixel / 255 over uint8 (n, 3, 32, 32), exactly.

    From each channel's 256-bin histogram: the sums of v and v^2 are exact integers, so only the
    final divisions and square root round (float64).
    """
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.zeros(256, dtype=np.int64)
        for start in range(0, len(images), _HISTOGRAM_CHUNK):  # bincount copies to int64: bound that copy
            counts += np.bincount(images[start : start + _HISTOGRAM_CHUNK, channel].ravel(), minlength=256)
        counts = counts.astype(np.float64)  # exact: at most 2^53 pixels
        total = counts.sum()
        mean = (counts @ values) / total
        var = (counts @ (values - mean) ** 2) / total  # two-pass on the histogram: no cancellation
        means.append(mean / 255.0)
        stds.append(np.sqrt(var) / 255.0)
    return np.array(means), np.array(stds)


def _standardised(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) -> float32 (pixel / 255 - mean_c) / std_c, one channel at a time."""
    out = images.astype(np.float32)
    for channel in range(images.shape[1]):
        scale = 1.0 / (255.0 * std[channel])  # pixel / 255 / std = pixel * scale
        out[:, channel] *= np.float32(scale)
        out[:, channel] -= np.float32(mean[channel] / std[channel])
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=2)
def _load_folder(folder: Path) -> Dataset:
    _check_meta(folder / META_FILE)
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_data, test_labels = _read_batch(folder / TEST_FILE)
    train_images = np.concatenate([data for data, _ in train]).reshape(-1, *IMAGE_SHAPE)  # (n, 3, 32, 32)
    mean, std = _channel_mean_std(train_images)
    if not (std > 0).all():
        raise ConfigError(f"CIFAR-10 training images in {folder} have a constant channel (std {std.tolist()}); "
                          f"the files are damaged: re-extract {SOURCE}")
    return Dataset(
        x_train=_standardised(train_images, mean, std),  # (50000, 3, 32, 32) float32 for the official set
        y_train=torch.from_numpy(np.concatenate([labels for _, labels in train])),  # (50000,) int64
        x_test=_standardised(test_data.reshape(-1, *IMAGE_SHAPE), mean, std),  # (10000, 3, 32, 32)
        y_test=torch.from_numpy(test_labels),  # (10000,) int64
    )


def load_cifar10(root: Path | str) -> Dataset:
    """CIFAR-10 from `root` (the `cifar-10-batches-py` folder or its parent), standardised per channel.

    x_train float32 (50000, 3, 32, 32), y_train int64 (50000,), x_test (10000, 3, 32, 32), y_test
    (10000,) for the official files; see the module docstring for the preprocessing. Cached per
    process by the folder's resolved path; the first load of a full-size folder takes ~4 s of CPU and
    keeps 0.74 GB (~1.2 GB at peak), measured. The tensors are shared between callers, so treat them
    as read-only. Every problem with the folder is a one-line ConfigError naming the file and the fix.
    """
    return _load_folder(locate_cifar10(root).resolve())
