"""scikit-learn's digits as torch tensors: 1,797 real 8 x 8 grayscale images of the ten digits, offline.

The images ship inside scikit-learn (`sklearn.datasets.load_digits`, the UCI optical-recognition test set:
32 x 32 bitmaps of handwriting from 43 people, block-counted to 8 x 8 with values 0..16), so nothing is
downloaded. They give the 2-D path (Conv2d with BatchNorm2d, 2-D GroupNorm, ...) real images on a CPU.

Split: a permutation drawn from `numpy.random.default_rng(seed)` (never the global RNGs), its first
TEST_SIZE images the test set and the remaining 1,497 the training set. Preprocessing, as mnist1d's own:
one global mean and one global standard deviation (of the training images) centre and scale every pixel;
nothing else (no augmentation, no per-pixel scaling).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .data import Dataset

IMAGE_SIZE = 8
IN_CHANNELS = 1
TEST_SIZE = 300


@functools.lru_cache(maxsize=4)
def load_digits(seed: int = 42) -> Dataset:
    """The digits split by `seed`: x (N, 1, 8, 8) float32, standardised; y (N,) int64. Cached per process;
    the tensors are shared between callers, so treat them as read-only."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    mean, std = images[train].mean(), images[train].std()

    def as_images(index: np.ndarray) -> torch.Tensor:
        # (n, 8, 8) -> (n, 1, 8, 8) float32
        return torch.from_numpy(((images[index] - mean) / std).astype(np.float32)).unsqueeze(1)

    return Dataset(x_train=as_images(train), y_train=torch.from_numpy(labels[train]),
                   x_test=as_images(test), y_test=torch.from_numpy(labels[test]))
