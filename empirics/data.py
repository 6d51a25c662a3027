"""mnist1d as torch tensors, generated offline and without side effects on global RNG state.

mnist1d (Greydanus 2020) draws 10 digit-like 1-D templates through random padding, translation,
scaling, shear and noise into 5000 signals of length 40, split 4000 train / 1000 test. We call its
procedural generator `make_dataset` (never `get_dataset`, which downloads a pickle).

Preprocessing is exactly mnist1d's own and nothing more: it centres and scales the whole dataset
(train and test together) by one global mean and one global standard deviation. We add no further
standardisation, augmentation or per-channel scaling.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch

from .storage import cache_dir, write_atomic

N_CLASSES = 10
SIGNAL_LENGTH = 40


@dataclass(frozen=True)
class Dataset:
    """Train/test split; signals carry one input channel for Conv1d."""

    x_train: torch.Tensor  # (4000, 1, 40) float32
    y_train: torch.Tensor  # (4000,) int64
    x_test: torch.Tensor  # (1000, 1, 40) float32
    y_test: torch.Tensor  # (1000,) int64


def _generate_without_side_effects(seed: int) -> dict:
    """Run mnist1d's generator, restoring the `random`, numpy and torch global RNG states after.

    `make_dataset` calls mnist1d's `set_seed`, which reseeds `random` and `numpy.random` globally;
    torch is saved too in case a future mnist1d version seeds it.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        args = get_dataset_args()
        args.seed = seed
        return make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)


def _cached_arrays(seed: int) -> dict:
    """The generated arrays, from the disk cache when an identical generation is stored there.

    Keyed by the mnist1d version and the seed; written atomically, and a corrupt entry is regenerated.
    """
    from importlib.metadata import version

    path = cache_dir() / f"mnist1d-{version('mnist1d')}-seed{seed}.npz"
    keys = ("x", "y", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (OSError, KeyError, ValueError):
        pass
    raw = _generate_without_side_effects(seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda file: np.savez(file, **{key: raw[key] for key in keys}))
    except OSError:
        pass  # an unwritable cache costs ~4 s per process, never correctness
    return raw


@functools.lru_cache(maxsize=4)
def load_mnist1d(seed: int = 42) -> Dataset:
    """mnist1d generated from `seed` (42 is mnist1d's published default), cached per process and on disk.

    Takes ~4 s the first time on a machine; the returned tensors are shared between callers, so treat
    them as read-only.
    """
    raw = _cached_arrays(seed)

    def signals(array: np.ndarray) -> torch.Tensor:
        # (samples, length) float64 -> (samples, 1, length) float32
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(1)

    def labels(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))

    return Dataset(
        x_train=signals(raw["x"]),
        y_train=labels(raw["y"]),
        x_test=signals(raw["x_test"]),
        y_test=labels(raw["y_test"]),
    )
