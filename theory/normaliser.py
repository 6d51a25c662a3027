"""A normaliser is defined once, by its forward formula; everything else is derived from it.

    z_i = gamma * hat(y_i; S_1, ..., S_r) + beta,    S_t = (1/m) sum_j f_t(y_j; S_1, ..., S_{t-1})

`statistics` lists the S_t in order, each as a batch mean (`batch_algebra.batch_mean`) of an
expression in one sample and the earlier statistics (or a batch maximum, `batch_algebra.batch_max`,
for which only concrete m is derived); `hat` maps one sample to its normalised value; `scale` is
the normalising scale, presented as sigma, and `scale_of_sigma` writes the statistics through it.
The Jacobian, the closed form of ||J^T g||^2, the bounds and their slack are derived by `derive`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from theory.batch_algebra import y

# Shared symbols with the assumptions the derivations rely on.
gamma = sp.Symbol("gamma", real=True)  # affine scale (a constant, as in the paper)
beta = sp.Symbol("beta", real=True)  # affine shift (a constant, as in the paper)
eps = sp.Symbol("epsilon", nonnegative=True)  # numerical-stability constant; the paper has eps = 0
sigma = sp.Symbol("sigma", positive=True)  # the normalising scale, e.g. sqrt(var + eps); > 0 by assumption
g_hat = sp.Symbol("G_hat", real=True)  # <g, yhat>, yhat the normalised batch (without affine)


def _canonical_indices(expr: sp.Expr) -> sp.Expr:
    """expr with its dummy summation indices replaced by fixed symbols, in creation order."""
    dummies = sorted(expr.atoms(sp.Dummy), key=lambda d: d.dummy_index)
    return expr.xreplace({d: sp.Symbol(f"_i{n}", integer=True, positive=True) for n, d in enumerate(dummies)})


@dataclass(frozen=True, eq=False)  # identity equality: hashable, usable as a cache key
class Normaliser:
    """Forward formula of a normaliser over one group of m values (the axis named in `axis`)."""

    name: str
    title: str
    # What the m values of one group are. The leading word names where a group sits in a layer y = XW
    # (`weight_space.AXIS_LAYOUTS`: "batch", "features", "group" or "weight space"), which decides the
    # thm4.4 analogue; the rest is free text, e.g. "batch: one channel over all (sample, position) pairs".
    axis: str
    statistics: tuple[tuple[sp.Symbol, sp.Expr], ...]
    hat: Callable[[sp.Expr], sp.Expr]  # one sample -> its normalised value, in the statistics' symbols
    scale: sp.Expr  # the normalising scale in the statistics' symbols (presented as sigma)
    scale_of_sigma: dict  # substitution expressing the statistics through sigma (e.g. var -> sigma^2 - eps)
    paper_form: bool = False  # centre and divide by the batch std: the paper's typed statements apply

    def formula_key(self) -> tuple:
        """The formula alone -- statistics (bound indices renamed canonically), hat, scale -- as a hashable
        key: normalisers with equal keys are the same function whatever their name and axis, so
        expensive concrete-m checks can be shared between them (BatchNorm, LayerNorm, GroupNorm, l2)."""
        sample = sp.Symbol("sample", real=True)
        statistics = tuple((symbol, sp.expand(_canonical_indices(definition))) for symbol, definition in self.statistics)
        sigma_map = tuple(sorted(self.scale_of_sigma.items(), key=lambda item: str(item[0])))
        return statistics, sp.expand(self.hat(sample)), self.scale, sigma_map

    def statement_key(self) -> tuple:
        """formula_key() and paper_form: all that a statement about the forward formula alone depends on,
        so such statements are established once for BatchNorm, LayerNorm, GroupNorm and l2 (`statements`)."""
        return self.formula_key(), self.paper_form

    def inline(self, expr: sp.Expr) -> sp.Expr:
        """expr with every statistic replaced by its defining batch sum (so diff sees through it)."""
        definitions: dict[sp.Symbol, sp.Expr] = {}
        for symbol, definition in self.statistics:
            definitions[symbol] = definition.subs(definitions)
        return expr.subs(definitions)

    def forward(self, sample: sp.Expr) -> sp.Expr:
        """z for one sample (statistics as symbols)."""
        return gamma * self.hat(sample) + beta

    def forward_inlined(self, index) -> sp.Expr:
        """z_index as a function of the whole batch y (statistics inlined as sums)."""
        return self.inline(self.forward(y[index]))
