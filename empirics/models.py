"""The 1-D VGG-style network trained on mnist1d, with or without BatchNorm after every conv.

    for each c in channels:  Conv1d(k=3, pad=1, bias) -> [BatchNorm1d(c)] -> ReLU
                             MaxPool1d(2) after every second conv       (40 -> 20 -> 10 -> 5)
                             (computed as `pooling.PairMaxPool1d`: the same function and gradient, faster)
    flatten -> Linear(hidden) -> ReLU -> Linear(10)

Initialisation follows the paper's VGG protocol: Glorot-uniform weights for every conv and linear
layer, zero biases, BatchNorm gamma = 1 and beta = 0. It draws only from the caller's
`torch.Generator`, never from the global RNG, so building a model has no side effects.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, ModelConfig, Norm
from .data import N_CLASSES, SIGNAL_LENGTH
from .norms import NormFactory, WeightSpaceFactory, match_weight_scales, norm_factory, place_norm
from .pooling import PairMaxPool1d

IN_CHANNELS = 1


def _conv_blocks(channels: tuple[int, ...], make_norm: NormFactory | WeightSpaceFactory | None
                 ) -> tuple[list[nn.Module], int]:
    """Feature layers and the signal length they leave (each pool halves it, flooring)."""
    layers: list[nn.Module] = []
    length = SIGNAL_LENGTH
    previous = IN_CHANNELS
    for index, width in enumerate(channels):
        conv = nn.Conv1d(previous, width, kernel_size=3, padding=1, bias=True)
        layers.extend(place_norm(conv, width, make_norm))  # conv + norm, the reparametrised conv, or the slot
        # not in-place: capture hooks keep the BN output and its gradient, which an in-place
        # ReLU would overwrite
        layers.append(nn.ReLU())
        if index % 2 == 1:
            layers.append(PairMaxPool1d())  # nn.MaxPool1d(2), without its slow index-returning kernel
            length //= 2
        previous = width
    return layers, length


def _glorot_init(model: nn.Module, generator: torch.Generator | None) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            # BatchNorm1d, GroupNorm, formula normalisers: gamma = 1, beta = 0 (running mean 0 / var 1), no RNG
            module.reset_parameters()
    match_weight_scales(model)  # weight-space normalisers: the scale from the initialised direction


def build_model(
    model_cfg: ModelConfig, norm: Norm, bn_eps: float, generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A freshly initialised VGG-1d on the CPU, float32, in train() mode.

    Pass a seeded CPU `generator` for a reproducible initialisation; with None the global RNG is
    used (and advanced). Noisy norms draw their noise from `noise_generator` only.
    """
    if model_cfg.name != "vgg1d":
        raise ConfigError(f"model.name={model_cfg.name!r} is not a known model; use 'vgg1d'")
    # Build on the meta device so PyTorch's default (Kaiming) init draws nothing from the global
    # RNG; real storage is allocated by to_empty() and filled by _glorot_init.
    with torch.device("meta"):
        features, length = _conv_blocks(tuple(model_cfg.channels), norm_factory(norm, bn_eps, noise_generator))
        if length < 1:
            raise ConfigError(
                f"model.channels has {len(model_cfg.channels)} convs, whose {len(model_cfg.channels) // 2} "
                f"pools shrink length {SIGNAL_LENGTH} to 0; use at most 10 convs"
            )
        model = nn.Sequential(
            *features,  # (batch, 1, 40) -> (batch, channels[-1], length)
            nn.Flatten(),  # -> (batch, channels[-1] * length)
            nn.Linear(model_cfg.channels[-1] * length, model_cfg.hidden),
            nn.ReLU(),
            nn.Linear(model_cfg.hidden, N_CLASSES),  # -> (batch, 10) logits
        )
    model.to_empty(device="cpu")
    _glorot_init(model, generator)
    return model.train()


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers in forward order, also inside noisy BN (empty without BN)."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
