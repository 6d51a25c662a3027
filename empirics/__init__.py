"""Measure: train real networks and capture the quantities the theory bounds."""

from .capture import REDUCTION_KEYS, ROW_KEYS, BoundCapture, channel_reductions
from .data import Dataset, load_mnist1d
from .models import build_model, norm_layers
from .runner import load_run, run_all
from .train import TrainResult, evaluate, resolve_device, train_model, train_run

__all__ = [
    "REDUCTION_KEYS",
    "ROW_KEYS",
    "BoundCapture",
    "Dataset",
    "TrainResult",
    "build_model",
    "channel_reductions",
    "evaluate",
    "load_mnist1d",
    "load_run",
    "norm_layers",
    "resolve_device",
    "run_all",
    "train_model",
    "train_run",
]
