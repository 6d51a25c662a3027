"""VGG for 32 x 32 images (CIFAR-10), the paper's main network, with or without a norm after every conv.

    for each entry of the configuration:
        int c -> Conv2d(c, 3 x 3, padding 1, bias) -> [norm(c)] -> ReLU
        "M"   -> MaxPool2d(2)                                          (32 -> 16 -> 8 -> 4 -> 2 -> 1)
    flatten -> Linear(C_last * s * s, num_classes)                     (s = 1 after VGG's five pools)

VGG-11 and VGG-16 are Simonyan & Zisserman's (2014) configurations A and D. The classifier is the
single Linear(512, 10) of the common CIFAR adaptation (kuangliu/pytorch-cifar `VGG`, whose trailing
AvgPool2d(1, 1) is the identity and omitted), not ImageNet VGG's three 4096-wide layers: the paper
states neither its classifier nor dropout [open], and one layer with no dropout keeps every
nonlinearity of the network a conv -> norm -> ReLU block. No dropout.

Initialisation, as the paper's VGG protocol and `models.py`: Glorot-uniform weights for every conv and
linear layer, zero biases, BatchNorm gamma = 1 and beta = 0 (running mean 0, var 1). Drawn only from
the caller's `torch.Generator`: the model is built on the meta device (PyTorch's default Kaiming init
draws nothing there), given storage by to_empty() and filled here.

`norm_slot`: every module the norm factory makes is tagged by `norms.norm_factory`; without a norm
the conv is tagged instead, as in `models.py` (the activations the paper's histograms show).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import ConfigError
from .norms import NormFactory, WeightSpaceFactory, match_weight_scales, place_norm

POOL = "M"
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
}
IN_CHANNELS = 3
IMAGE_SIZE = 32


def resolve_config(config: str | Sequence[int | str], width_multiplier: float = 1.0) -> tuple[int | str, ...]:
    """The layer list of a named configuration or an explicit one, widths scaled by `width_multiplier`.

    Scaled widths are rounded to the nearest integer, at least 1.
    """
    if isinstance(config, str):
        if config not in VGG_CONFIGS:
            raise ConfigError(f"VGG configuration {config!r} is unknown; use one of {sorted(VGG_CONFIGS)} "
                              f"or a channel list such as (8, 'M', 16, 'M')")
        config = VGG_CONFIGS[config]
    if not width_multiplier > 0:
        raise ConfigError(f"width_multiplier={width_multiplier} must be > 0")
    layers: list[int | str] = []
    for item in config:
        if item == POOL:
            layers.append(POOL)
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            layers.append(max(1, round(item * width_multiplier)))
        else:
            raise ConfigError(f"VGG layer {item!r} in {list(config)} is neither a positive channel count nor "
                              f"{POOL!r} (max-pool); fix the configuration")
    if not any(item != POOL for item in layers):
        raise ConfigError(f"VGG configuration {list(config)} has no conv layer; give at least one channel count")
    return tuple(layers)


def digits_layers(channels: Sequence[int]) -> tuple[int | str, ...]:
    """The 2-D VGG for 8 x 8 digits (ModelConfig "vgg2d_digits"): vgg1d's plan in 2-D, a max-pool after every
    second conv (8 -> 4 -> 2 for four convs)."""
    layers: list[int | str] = []
    for index, width in enumerate(channels):
        layers.append(width)
        if index % 2 == 1:
            layers.append(POOL)
    return tuple(layers)


def _feature_layers(layers: tuple[int | str, ...], make_norm: NormFactory | WeightSpaceFactory | None,
                    in_channels: int, image_size: int) -> tuple[list[nn.Module], int, int]:
    """Feature modules, their output channels and the side length they leave (each pool halves it)."""
    modules: list[nn.Module] = []
    previous, size = in_channels, image_size
    for item in layers:
        if item == POOL:
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            size //= 2
            continue
        conv = nn.Conv2d(previous, item, kernel_size=3, padding=1, bias=True)
        modules.extend(place_norm(conv, item, make_norm))  # conv + norm, the reparametrised conv, or the slot
        # not in-place: capture hooks keep the BN output and its gradient, which an in-place ReLU
        # would overwrite
        modules.append(nn.ReLU())
        previous = item
    return modules, previous, size


def _glorot_init(model: nn.Module, generator: torch.Generator | None) -> None:
    """Glorot-uniform conv/linear weights, zero biases; every other module with state reset (no RNG)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()  # BatchNorm2d and formula norms: gamma = 1, beta = 0, running stats
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            # to_empty() left its storage uninitialised and nothing here knows how to fill it
            raise TypeError(f"{type(module).__name__} has parameters or buffers but no reset_parameters(); "
                            "give it one (no RNG) so build_vgg2d can initialise it")


def build_vgg2d(
    config: str | Sequence[int | str],
    norm_factory_2d: NormFactory | None,
    generator: torch.Generator | None = None,
    width_multiplier: float = 1.0,
    num_classes: int = 10,
    in_channels: int = IN_CHANNELS,
    image_size: int = IMAGE_SIZE,
) -> nn.Sequential:
    """A freshly initialised VGG on the CPU, float32, in train() mode, for (N, in_channels, image_size, image_size)
    inputs: (N, 3, 32, 32) CIFAR-10 by default, (N, 1, 8, 8) for scikit-learn's digits (`digits_layers`).

    config: "vgg11", "vgg16", or a layer list of channel counts and "M" (max-pool), e.g. the test
    size (8, "M", 16, "M"). norm_factory_2d: `norms.norm_factory(norm, eps, noise_generator,
    spatial_dims=2)` (None: no normalisation). Pass a seeded CPU `generator` for a reproducible
    initialisation; with None the global RNG is used (and advanced).
    """
    layers = resolve_config(config, width_multiplier)
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be >= 1")
    with torch.device("meta"):
        features, channels, size = _feature_layers(layers, norm_factory_2d, in_channels, image_size)
        if size < 1:
            pools = layers.count(POOL)
            raise ConfigError(f"VGG configuration has {pools} max-pools, which shrink {image_size} x {image_size} "
                              f"images to nothing; use at most {image_size.bit_length() - 1}")
        model = nn.Sequential(
            *features,  # (batch, in_channels, image_size, image_size) -> (batch, channels, size, size)
            nn.Flatten(),  # -> (batch, channels * size * size): 512 for VGG-11/16
            nn.Linear(channels * size * size, num_classes),  # -> (batch, num_classes) logits
        )
    model.to_empty(device="cpu")
    _glorot_init(model, generator)
    match_weight_scales(model)  # weight-space normalisers: the scale from the initialised direction
    return model.train()


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The model's Conv2d layers in forward order (VGG-11 has 8, VGG-16 has 13)."""
    return [module for module in model.modules() if isinstance(module, nn.Conv2d)]
