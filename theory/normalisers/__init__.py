"""One module per normaliser; each defines only its forward formula (see `theory.normaliser`)."""

from theory.normalisers.batchnorm import BATCHNORM

REGISTRY = {n.name: n for n in (BATCHNORM,)}

__all__ = ["BATCHNORM", "REGISTRY"]
