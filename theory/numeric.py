"""The one bridge from symbols to numbers: derived SymPy expressions as NumPy callables.

`verify` and the tests call these and never import SymPy themselves. Every callable broadcasts
over NumPy arrays, so a whole table of captured (layer, channel, step) rows is evaluated at once.
Argument names follow the capture records of `empirics.capture`:

    g_sq = ||g||^2,  g_sum = <1, g>,  g_yhat = <g, yhat>,  m,  gamma,  sigma = sqrt(var + eps),  eps

(sigma and yhat are always the normaliser's own scale and normalised values: `scale_and_hat`.)

The forward map itself is lambdified from the same SymPy formula (`torch_forward`, `scale_and_hat`):
each statistic's summand is lambdified for one sample and reduced by a mean (a `batch_max`: amax)
over the normalisation axes, in the formula's order -- so mu is computed before var (two passes,
numerically stable) and no forward is ever written twice. torch is never imported here; lambdify
with module "torch" and tensor methods do the work.

The modules' backward is derived from the same formula (`torch_program`, `_fused_programs`): reverse mode
through the statistics program, for symbolic m, printed as fused torch code. For a statistic that is a
batch maximum (l-inf's max_i |y_i - mu|) the derived backward is the derivative on the smooth piece where
one sample attains the maximum, dR/dy_i = w_i df/dy(y_i), w_i = 1[f(y_i) = R] / #{samples attaining R},
recomputed in the backward from the saved input and statistics; at a tie it is the subgradient torch's
amax backward takes (the samples attaining R share its gradient evenly), and w is piecewise constant, so
the backward differentiates again as autograd of the forward does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import sympy as sp

from theory.activation_bound import APPENDIX_C, bound_expressions, paper_bound
from theory.batch_algebra import BatchMax, NoClosedForm, k, l, m, mixed_sum, y
from theory.cache import cached
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import REGISTRY

_G1, _G2 = mixed_sum(0, 1), mixed_sum(0, 2)
_INVARIANT_ARGS = (_G2, _G1, g_hat, m, gamma, sigma, eps)


def _normaliser(name: str):
    if name not in REGISTRY:
        raise KeyError(f"unknown normaliser {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def grad_sq_norm(normaliser: str):
    """f(g_sq, g_sum, g_yhat, m, gamma, sigma, eps) = ||J^T g||^2, the derived closed form.

    Raises batch_algebra.NoClosedForm for a normaliser without one (l1, l-inf).
    """
    return _grad_sq_norm(_normaliser(normaliser))


@functools.cache  # keyed by the Normaliser object, so a re-registered name never gets a stale callable
def _grad_sq_norm(target):
    derivation = derive(target)
    return sp.lambdify(_INVARIANT_ARGS, derivation.in_sigma(derivation.grad_sq_norm), "numpy")


def _bounds(target) -> dict[str, sp.Expr]:
    # simplified per normaliser (seconds of SymPy each): on disk like the derivations (theory.cache), so the
    # theory stage computes them once and the report's checks only load them
    return cached("bounds", target, lambda: _bound_expressions(target))


def _bound_expressions(target) -> dict[str, sp.Expr]:
    try:
        return bound_expressions(derive(target))
    except NoClosedForm:  # l1, l-inf: their thm4.1 needs more reductions (`piecewise_callable`)
        return {"thm4.1-batchnorm-rhs": paper_bound(APPENDIX_C)}


def activation_bound(claim_id: str, normaliser: str = "batchnorm"):
    """f(g_sq, g_sum, g_yhat, m, gamma, sigma) = the right side of thm4.1 (or a variant) for `normaliser`.

    For a normaliser without a closed form in batch moments (l1, l-inf) the one bound of this signature is
    "thm4.1-batchnorm-rhs": BatchNorm's (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - <g,yhat>^2/m) with the
    normaliser's own sigma and yhat -- a comparison, not its thm4.1 (`lp_bounds`); its own thm4.1 and
    thm4.1-reduction take other reductions: `piecewise_callable`.
    """
    return _activation_bound(claim_id, _normaliser(normaliser))


@functools.cache
def _activation_bound(claim_id: str, target):
    bounds = _bounds(target)
    if claim_id not in bounds:
        hint = ("; its thm4.1 needs per-group reductions beyond (g_sq, g_sum, g_yhat): use "
                "numeric.piecewise_callable") if "thm4.1-batchnorm-rhs" in bounds else ""
        raise KeyError(f"no activation bound {claim_id!r} for {target.name}; known: {', '.join(bounds)}{hint}")
    return sp.lambdify(_INVARIANT_ARGS[:-1], bounds[claim_id], "numpy")


# --- the forward formula as array code (NumPy or torch) ----------------------------------------------

_SAMPLE = sp.Symbol("y_sample", real=True)


@functools.cache
def _statistic_parts(target) -> tuple:
    """Per statistic: (symbol, reductions [(kind, summand in _SAMPLE)], placeholders, combine in the placeholders).

    A statistic is an expression in batch reductions (Sum / BatchMax over the batch index) and
    earlier statistics. Each reduction's summand is written for one sample; Sum(f)/m is rewritten
    as mean(f) (so the division is the reduction's own), BatchMax(f) as amax(f).
    """
    parts = []
    for symbol, definition in target.statistics:
        atoms = sorted(definition.atoms(sp.Sum, BatchMax), key=sp.default_sort_key)
        reductions, placeholders, replaced = [], [], {}
        for n, atom in enumerate(atoms):
            ((index, lower, upper),) = atom.limits
            summand = atom.function.xreplace({y[index]: _SAMPLE})
            if (lower, upper) != (1, m) or summand.has(index):
                raise ValueError(f"{target.name}: statistic {symbol} = {definition} is not a reduction over the "
                                 "batch of an expression in one sample y_i; write it with batch_mean/batch_max")
            reduced = sp.Symbol(f"_reduced{n}", real=True)
            replaced[atom] = m * reduced if isinstance(atom, sp.Sum) else reduced
            placeholders.append(reduced)
            reductions.append(("mean" if isinstance(atom, sp.Sum) else "max", summand))
        parts.append((symbol, tuple(reductions), tuple(placeholders), definition.xreplace(replaced)))
    return tuple(parts)


@functools.cache
def _statistic_programs(target, module: str) -> tuple:
    """Per statistic: (reductions [(kind, summand_fn)], combine_fn) lambdified from `_statistic_parts`; see
    `_statistics`."""
    programs, earlier = [], []
    for symbol, reductions, placeholders, combine in _statistic_parts(target):
        summands = tuple((kind, sp.lambdify((_SAMPLE, *earlier, eps, m), summand, module)) for kind, summand in reductions)
        programs.append((summands, sp.lambdify((*placeholders, *earlier, eps, m), combine, module)))
        earlier.append(symbol)
    return tuple(programs)


def _statistics(target, module: str, values, reduce: Callable, eps_value, count) -> list:
    """The statistics of `values` over the normalisation axes, in definition order (mu before var)."""
    stats: list = []
    for reductions, combine in _statistic_programs(target, module):
        reduced = []
        for kind, summand in reductions:
            term = summand(values, *stats, eps_value, count)
            reduced.append(reduce(kind, term + values * 0))  # + values*0: a constant summand still has the shape
        stats.append(combine(*reduced, *stats, eps_value, count))
    return stats


@functools.cache
def _hat_program(target, module: str):
    symbols = [symbol for symbol, _ in target.statistics]
    hat = sp.lambdify((_SAMPLE, *symbols, eps, m), target.hat(_SAMPLE), module)
    scale = sp.lambdify((*symbols, eps, m), target.scale, module)
    return hat, scale


def _axes(dims, ndim: int) -> tuple[int, ...]:
    axes = tuple(sorted({d % ndim for d in dims})) if ndim else ()
    if not axes or len(axes) != len(tuple(dims)):
        raise ValueError(f"dims={tuple(dims)} must name distinct axes of a {ndim}-d input (statistics run over them)")
    return axes


def torch_forward(normaliser: str) -> Callable:
    """f(y, dims, eps, gamma, beta) -> z: the normaliser's forward on a torch tensor, from its SymPy formula.

    Statistics run over the axes `dims` of y (kept as size-1 axes, so they broadcast back); m is the
    number of elements they span. gamma and beta are floats or tensors broadcastable to y. Training-mode
    semantics (batch statistics) always: there are no running statistics.
    """
    target = _normaliser(normaliser)

    def forward(values, dims, eps=1e-5, gamma=1.0, beta=0.0):
        axes = _axes(dims, values.dim())
        # m and eps as tensors of y's dtype and device: torch.sqrt(m) etc. accept tensors only
        count = values.new_tensor(float(math.prod(values.shape[d] for d in axes)))
        eps = values.new_tensor(float(eps))

        def reduce(kind, term):
            return term.mean(dim=axes, keepdim=True) if kind == "mean" else term.amax(dim=axes, keepdim=True)

        stats = _statistics(target, "torch", values, reduce, eps, count)
        hat, _ = _hat_program(target, "torch")
        return gamma * hat(values, *stats, eps, count) + beta

    forward.__name__ = f"{target.name}_forward"
    forward.__doc__ = f"{target.title}: statistics over `dims` ({target.axis})."
    return forward


def scale_and_hat(normaliser: str, values, eps_value: float, dims=(-1,)) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, yhat) in float64 NumPy: the normaliser's own scale (keepdims over `dims`) and normalised values."""
    target = _normaliser(normaliser)
    values = np.asarray(values, dtype=np.float64)
    axes = _axes(dims, values.ndim)
    count = math.prod(values.shape[d] for d in axes)

    def reduce(kind, term):
        return term.mean(axis=axes, keepdims=True) if kind == "mean" else term.max(axis=axes, keepdims=True)

    stats = _statistics(target, "numpy", values, reduce, eps_value, count)
    hat, scale = _hat_program(target, "numpy")
    kept = tuple(1 if axis in axes else size for axis, size in enumerate(values.shape))
    sigma_value = np.broadcast_to(np.asarray(scale(*stats, eps_value, count), dtype=np.float64), kept)
    return sigma_value.copy(), hat(values, *stats, eps_value, count) + values * 0


def torch_scale_and_hat(normaliser: str, values, eps_value: float, dims=(-1,)) -> tuple:
    """(sigma, yhat) as torch tensors of values' dtype and device: `scale_and_hat` for torch (sigma kept as size-1
    axes over `dims`, broadcast against values; yhat of values' shape). The measured side's view of the formula
    (`empirics.capture` reduces captured groups with it), lambdified from the same statistics program."""
    target = _normaliser(normaliser)
    axes = _axes(dims, values.dim())
    count = values.new_tensor(float(math.prod(values.shape[d] for d in axes)))
    eps_tensor = values.new_tensor(float(eps_value))

    def reduce(kind, term):
        return term.mean(dim=axes, keepdim=True) if kind == "mean" else term.amax(dim=axes, keepdim=True)

    stats = _statistics(target, "torch", values, reduce, eps_tensor, count)
    hat, scale = _hat_program(target, "torch")
    kept = tuple(1 if axis in axes else size for axis, size in enumerate(values.shape))
    sigma_value = scale(*stats, eps_tensor, count) + values.new_zeros(kept)  # a constant scale still has the shape
    return sigma_value, hat(values, *stats, eps_tensor, count) + values * 0


@functools.cache
def _jacobian_entry(target):
    derivation = derive(target)
    y_l, y_k, delta = sp.symbols("y_l y_k delta", real=True)
    entry = derivation.jacobian.subs(sp.KroneckerDelta(k, l), delta).subs({y[l]: y_l, y[k]: y_k})
    stats = [symbol for symbol, _ in target.statistics]
    return sp.lambdify((y_l, y_k, delta, *stats, gamma, eps, m), entry, "numpy")


def jacobian(normaliser: str, batch: np.ndarray, gamma_value: float, eps_value: float) -> np.ndarray:
    """dz/dy (m x m) of one group `batch` (shape (m,)), from the symbolic-m Jacobian entry.

    The statistics are evaluated from their definitions in order (mu, then mean((y - mu)^2): two
    passes, stable for a batch whose mean dwarfs its spread, where raw moments M_2 - M_1^2 cancel
    catastrophically). Raises NoClosedForm for a normaliser without a symbolic-m closed form.
    """
    target = _normaliser(normaliser)
    entry_fn = _jacobian_entry(target)
    batch = np.asarray(batch, dtype=np.float64)
    size = batch.shape[0]

    def reduce(kind, term):
        return np.mean(term) if kind == "mean" else np.max(term)

    stats = _statistics(target, "numpy", batch, reduce, eps_value, size)
    return entry_fn(batch[:, None], batch[None, :], np.eye(size), *stats, gamma_value, eps_value, size)


# --- the forward program and its derived backward as fused torch code (the modules' autograd.Function) ---

_GRAD = sp.Symbol("g_sample", real=True)  # dL/dz of one sample
_AXES = sp.Symbol("axes")  # the normalisation axes, passed through to the reductions
_BATCH_SUM, _BATCH_MEAN = sp.Function("_batch_sum"), sp.Function("_batch_mean")
_BATCH_MAX = sp.Function("_batch_max")
_PER_GROUP = sp.Function("_per_group")  # identity: makes one-number-per-group factors multiply before the tensor
# 1[f_i = max_j f_j], f the argument: per sample, constant on a smooth piece (`_attained`, `_max_weight`)
_ATTAINED = sp.Function("_attained")
_REDUCTIONS = (_BATCH_SUM, _BATCH_MEAN, _BATCH_MAX)


def _batch_sum(tensor, axes: tuple[int, ...]):
    """Sum over `axes` (kept as size 1), one axis at a time from the outermost: on a CPU the outer axis adds whole
    contiguous rows (vectorised), 2-5x faster than torch's one multi-axis reduction of a (N, C, L) activation."""
    for axis in axes:
        tensor = tensor.sum(axis, keepdim=True)
    return tensor


def _batch_mean(tensor, axes: tuple[int, ...]):
    return _batch_sum(tensor, axes) / math.prod(tensor.shape[axis] for axis in axes)


def _batch_max(tensor, axes: tuple[int, ...]):
    """Maximum over `axes` (kept as size 1), one axis at a time: a multi-axis amax of a (N, C, L) activation takes
    ~10x as long on this CPU (160 against 15 us at (128, 32, 10)); the maximum is exact either way."""
    for axis in axes:
        tensor = tensor.amax(axis, keepdim=True)
    return tensor


def _attained(tensor, axes: tuple[int, ...]):
    """1 where `tensor` attains its maximum over `axes`, else 0, in tensor's dtype: 1 + sign(t - max t), t <= max t
    (exact: t - max t is 0 only where they are equal). Arithmetic, not (tensor == max).to(dtype): the comparison
    and the cast measured ~88 us against ~67 for these three at (128, 8, 40) here. Recomputed from `tensor`, so at least one sample attains it whatever the rounding; piecewise constant,
    so autograd differentiates it to 0 (sign's derivative), as it does amax's mask."""
    return (tensor - _batch_max(tensor, axes)).sign() + 1


_TORCH_FUNCTIONS = {"_batch_sum": _batch_sum, "_batch_mean": _batch_mean, "_batch_max": _batch_max,
                    "_attained": _attained, "_per_group": lambda t: t}


def _per_sample(expr: sp.Expr) -> bool:
    """Whether expr varies within a group: it holds y or g outside a batch reduction."""
    if expr in (_SAMPLE, _GRAD):
        return True
    if expr.func in _REDUCTIONS:
        return False
    return any(_per_sample(arg) for arg in expr.args)


def _signed_content(factor: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(c, f) with factor = c f: c the numeric content of a sum (1 for any other factor), f the sum in the sign SymPy
    keeps canonical (as in sign(mu - y) = -sign(y - mu)), so that one tensor serves both y - mu and mu - y and the
    number multiplies the per-group factors instead of the tensor."""
    if not factor.is_Add:
        return sp.Integer(1), factor
    content, primitive = factor.primitive()
    if primitive.could_extract_minus_sign():
        return -content, -primitive
    return content, primitive


def _group_first(expr: sp.Expr) -> sp.Expr:
    """expr with the per-group factors of every product (terms of every sum) combined before the per-sample
    ones: one tensor-sized operation for gamma / sigma * (y - mu), not two; 2 (y - mu) g / sigma as
    (mu - y) (-2 g / sigma), reusing the tensor mu - y."""
    if not expr.args or expr.func in (_PER_GROUP,):
        return expr
    args = [_group_first(arg) for arg in expr.args]
    if expr.is_Mul or expr.is_Add:
        group = [arg for arg in args if not _per_sample(arg)]
        sample = [arg for arg in args if _per_sample(arg)]
        if expr.is_Mul and sample:
            contents, signed = zip(*map(_signed_content, sample))
            signed_group = [factor for factor in (*group, *contents) if factor != 1]
            if len(signed_group) > 1:  # else Mul(c, sum) would distribute c over the sum again
                group, sample = signed_group, list(signed)
        if sample and len(group) > 1:
            combined = sp.Mul(*group) if expr.is_Mul else sp.Add(*group)
            return expr.func(_PER_GROUP(combined), *sample)
    return expr.func(*args)


def _max_weight(summand: sp.Expr) -> sp.Expr:
    """w_i = 1[f(y_i) = max_j f(y_j)] / #{j: f(y_j) = max f}: dR/dy_i = w_i df/dy(y_i) for R = max_i f(y_i), ties
    shared evenly (torch's amax backward); the count a per-group factor, so no tensor-sized division."""
    attained = _ATTAINED(summand, _AXES)
    return attained / _BATCH_SUM(attained, _AXES)


def _reduce(kind, expr: sp.Expr) -> sp.Expr:
    """The batch sum / mean of expr, per-group factors pulled out of it (they are constants of the sum), and the
    numeric content and sign of its per-sample sums (`_signed_content`)."""
    group, sample = [], []
    for factor in sp.Mul.make_args(sp.factor_terms(expr)):
        if _per_sample(factor):
            content, factor = _signed_content(factor)
            group.append(content)
            sample.append(factor)
        else:
            group.append(factor)
    group, sample = sp.Mul(*group), sp.Mul(*sample)
    if sample == 1:
        return group * (m if kind is _BATCH_SUM else 1)
    return group * kind(sample, _AXES)


@functools.cache
def _fused_programs(target, affine: bool) -> tuple:
    """(forward, backward, seeded backward) as lambdified torch code with common subexpressions computed once.

    forward(y, gamma, beta, eps, m, axes) -> [z, S_1, ..., S_r]: z = gamma * yhat + beta, statistics as
    batch means (or maxima) over `axes` (kept as size-1 axes); m and eps are Python floats (`_TorchReductionPrinter`).
    seeded(y, g, S_1, .., S_r, gamma, eps, m, axes, Q_1, .., Q_r) -> [dL/dy, per-group dL/dgamma, per-group
    dL/dbeta], g = dL/dz, Q_t = dL/dS_t; backward(y, g, S_1, .., S_r, gamma, eps, m, axes) the same with every
    Q_t = 0 (a training step's: the statistics feed nothing downstream; their seeds come only in a second
    derivative, `empirics.norm_layers._DerivedNormalise`). Reverse mode through
    the statistics program (S_t = c_t(R_t1, .., S_<t), R_tj = sum_i w_tj,i f_tj(y_i; S_<t) a batch mean, w = 1/m,
    or R_tj = max_i f_tj(y_i; S_<t) a batch maximum, yhat_i = h(y_i; S)) with every partial derivative taken
    symbolically for one sample:

        Sbar_t  = Q_t + sum_i ghat_i dh/dS_t(y_i) + sum_{t' > t} (Sbar_t' dc_t'/dS_t + sum_j Rbar_t'j sum_i w_t'j,i df_t'j/dS_t)
        Rbar_tj = Sbar_t dc_t/dR_tj,      dL/dy_i = ghat_i dh/dy(y_i) + sum_tj Rbar_tj w_tj,i df_tj/dy(y_i)

    with ghat = gamma g. For a mean, w = 1/m: exact for symbolic m. For a maximum, w_tj,i = 1[f_tj(y_i) = R_tj] /
    #{k: f_tj(y_k) = R_tj} (`_max_weight`, recomputed in the backward from the saved y and statistics): dR/dy_i =
    w_i df/dy(y_i) is the derivative on the smooth piece where one sample attains the maximum, and at a tie it is
    the subgradient torch's amax backward takes (the samples that attain it share the gradient evenly); w is
    constant on the piece, so its derivative is 0, as autograd of amax has it, and the backward differentiates
    again to autograd's second derivative of the forward. `affine`: gamma and beta are one number per group (the
    per-channel affine of a batch-style normaliser); otherwise gamma = 1, beta = 0 and the caller applies it.
    Raises NoClosedForm for a statistic not linear in its reductions.
    """
    parts = _statistic_parts(target)
    stats = [symbol for symbol, _, _, _ in parts]
    scale, shift = (gamma, sp.Symbol("beta", real=True)) if affine else (sp.Integer(1), sp.Integer(0))
    hat = target.hat(_SAMPLE)

    # forward: each statistic a batch mean (or maximum) of its summand, the earlier statistics inlined
    inlined: dict = {}
    for symbol, reductions, placeholders, combine in parts:
        reduced = {p: (_BATCH_MEAN if kind == "mean" else _BATCH_MAX)(summand, _AXES)
                   for p, (kind, summand) in zip(placeholders, reductions)}
        inlined[symbol] = combine.xreplace(reduced).xreplace(inlined)
    outputs = [scale * hat + shift, *stats]
    forward_code = [_group_first(expr.xreplace(inlined)) for expr in outputs]

    # backward: reverse mode through the statistics (module doc), the statistics given as saved values
    seeds = [sp.Symbol(f"_seed{t}", real=True) for t in range(len(stats))]
    # mean_i (f(y_i) - S) = 0 for a statistic S = mean_i f(y_i) (mean_i (mu - y_i) = 0 for the centre mu): dropped,
    # not computed (float rounding apart, autograd of the forward computes it as ~0; its derivative along S is 0 too)
    centred = {_BATCH_MEAN(_signed_content(reductions[0][1] - symbol)[1], _AXES): sp.Integer(0)
               for symbol, reductions, placeholders, combine in parts
               if len(reductions) == 1 and reductions[0][0] == "mean" and combine == placeholders[0]}
    grad_hat = scale * _GRAD
    stat_bar: dict[int, sp.Expr] = {}
    reduction_bar: dict[tuple[int, int], sp.Expr] = {}
    for t in reversed(range(len(stats))):
        total = seeds[t] + _reduce(_BATCH_SUM, grad_hat * sp.diff(hat, stats[t]))
        for later in range(t + 1, len(stats)):
            _, later_reductions, _, later_combine = parts[later]
            total += stat_bar[later] * sp.diff(later_combine, stats[t])
            for j, (kind, summand) in enumerate(later_reductions):
                slope = sp.diff(summand, stats[t])  # mean_i df/dS, or sum_i w_i df/dS for a maximum
                total += reduction_bar[later, j] * (_reduce(_BATCH_MEAN, slope).xreplace(centred) if kind == "mean"
                                                    else _reduce(_BATCH_SUM, _max_weight(summand) * slope))
        stat_bar[t] = total
        _, own_reductions, placeholders, combine = parts[t]
        for j in range(len(own_reductions)):
            slope = sp.diff(combine, placeholders[j])
            if slope.free_symbols & set(placeholders):
                raise NoClosedForm(f"{target.name}: statistic {stats[t]} is not linear in its batch reductions; "
                                   "differentiate its forward with autograd")
            reduction_bar[t, j] = stat_bar[t] * slope
    input_bar = grad_hat * sp.diff(hat, _SAMPLE) + sum(
        (reduction_bar[t, j] * sp.diff(summand, _SAMPLE) * (1 / m if kind == "mean" else _max_weight(summand))
         for t, (_, own_reductions, _, _) in enumerate(parts) for j, (kind, summand) in enumerate(own_reductions)),
        sp.Integer(0))
    backward_code = [input_bar]
    if affine:
        backward_code += [_reduce(_BATCH_SUM, _GRAD * hat), _reduce(_BATCH_SUM, _GRAD)]

    # cse's "basic" optimisations share products across the outputs (fewer per-group ops than plain cse)
    options = {"modules": [_TORCH_FUNCTIONS, "torch"], "cse": functools.partial(sp.cse, optimizations="basic"),
               "printer": _TorchReductionPrinter}
    affine_args = (scale, shift) if affine else ()
    forward = sp.lambdify((_SAMPLE, *affine_args, eps, m, _AXES), forward_code, **options)
    backward_args = (_SAMPLE, _GRAD, *stats, *affine_args[:1], eps, m, _AXES)
    seeded = sp.lambdify((*backward_args, *seeds), [_group_first(expr) for expr in backward_code], **options)
    # the training backward: every Q_t = 0 (no statistic is used downstream), so no seed is ever added
    unseeded = [_group_first(expr.xreplace(dict.fromkeys(seeds, sp.Integer(0)))) for expr in backward_code]
    return forward, sp.lambdify(backward_args, unseeded, **options), seeded


def _torch_printer():
    from sympy.printing.pytorch import TorchPrinter

    class TorchReductionPrinter(TorchPrinter):
        """TorchPrinter that prints the batch reductions, _attained and _per_group as calls of _TORCH_FUNCTIONS."""

        def _print_Function(self, expr):
            if expr.func in (*_REDUCTIONS, _PER_GROUP, _ATTAINED):
                return f"{expr.func.__name__}({', '.join(self._print(arg) for arg in expr.args)})"
            return super()._print_Function(expr)

        def _print_Pow(self, expr):
            if expr.free_symbols <= {m, eps}:  # Python floats (TorchProgram): 1/m in Python, not a tensor op
                return f"({self._print(expr.base)})**({self._print(expr.exp)})"
            return super()._print_Pow(expr)

        def _as_ordered_terms(self, expr, order=None):
            # terms without a leading minus first: y - mu is one subtraction, -mu + y a negation and an addition
            return sorted(super()._as_ordered_terms(expr, order=order), key=lambda term: term.could_extract_minus_sign())

    return TorchReductionPrinter


_TorchReductionPrinter = _torch_printer()


class TorchProgram:
    """A normaliser's forward and derived backward on torch tensors, as fused code (`torch_program`)."""

    def __init__(self, target):
        self.name = target.name
        self._target = target
        # derived now (raises NoClosedForm before any module is built) and held: no cache lookup per call
        self._programs = {affine: _fused_programs(target, affine) for affine in (True, False)}

    def forward(self, values, axes: tuple[int, ...], eps_value: float, gamma=None, beta=None) -> tuple:
        """(z, [S_1, ..., S_r]) over `axes`: z = gamma yhat + beta with gamma, beta one number per group (tensors
        broadcasting against values), or yhat when both are None; statistics kept as size-1 axes."""
        forward = self._programs[gamma is not None][0]
        affine = (gamma, beta) if gamma is not None else ()
        z, *stats = forward(values, *affine, float(eps_value), _group_size(values, axes), axes)
        return z, stats

    def backward(self, values, stats: list, grad, stat_grads: list, axes: tuple[int, ...], eps_value: float,
                 gamma=None) -> list:
        """[dL/dy] (or [dL/dy, dL/dgamma, dL/dbeta] per group, with gamma) from dL/dz and dL/dS_t (None: zero), in
        torch ops throughout, so the result differentiates again."""
        _, backward, seeded = self._programs[gamma is not None]
        arguments = (values, grad, *stats, *((gamma,) if gamma is not None else ()), float(eps_value),
                     _group_size(values, axes), axes)
        if all(stat_grad is None for stat_grad in stat_grads):
            return backward(*arguments)
        return seeded(*arguments, *(0.0 if stat_grad is None else stat_grad for stat_grad in stat_grads))


def _group_size(values, axes: tuple[int, ...]) -> float:
    """m, a Python float: the programs' scalars stay out of torch (a 0-d tensor from new_tensor measured ~25 us here,
    four per forward and backward, and every operation on it is one more dispatch)."""
    return float(math.prod(values.shape[d] for d in axes))


def torch_program(normaliser: str) -> TorchProgram:
    """The normaliser's forward with the backward derived from its formula (`_fused_programs`), for a
    torch.autograd.Function: J^T g in a few batch sums and elementwise operations, instead of autograd
    through the forward's many small ops; for a batch maximum (l-inf) the derivative on the smooth piece,
    ties shared evenly as torch's amax backward shares them. Raises NoClosedForm where the backward has no
    such form (a statistic not linear in its reductions): use `torch_forward` with autograd there."""
    return TorchProgram(_normaliser(normaliser))


# --- weight space (thm4.4 and its analogues): the weight-space statements' block, kept separate ------

from theory.weight_space import GroupLayout, group_layout, x_op_sq
from theory.weight_space_analogues import dy_sq


@functools.cache
def weight_grad_bound(normaliser: str = "batchnorm"):
    """f(x_op_sq, a, g_sum, g_yhat, m, gamma, sigma): the per-unit weight bound (thm4.4-per-unit) of `normaliser`.

    x_op_sq = ||X||_2^2 is the squared spectral norm of the layer's input batch X (m x d), y = X W.

    - groups over the batch (BatchNorm, l2): bounds ||dL-hat/dW_(.j)||^2 = ||X^T dL-hat/dy_j||^2
      by ||X||_2^2 RHS_thm4.1; a = g_sq = ||g||^2 and the rest as for `activation_bound`, over unit j's
      batch (g = dL-hat/dz_j). l1 and l-inf: their RHS_thm4.1 takes more reductions (`piecewise_callable`,
      "thm4.1", times x_op_sq): KeyError here.
    - weight-space normalisers (WeightNorm, w_j = gamma v_j/||v_j||): bounds ||dL-hat/dv_j||^2 by RHS_thm4.1
      with ||g||^2 -> ||X||_2^2 ||delta_j||^2; a = dy_sq = ||delta_j||^2, delta_j = dL-hat/dy_j, and
      g_sum = <1, X^T delta_j>, g_yhat = <X^T delta_j, v_j/||v_j||>, m = d, sigma = ||v_j||.

    Per-sample normalisers (LayerNorm, RMSNorm, GroupNorm) have no per-unit bound: `layer_weight_grad_bound`.
    """
    target = _normaliser(normaliser)
    layout = group_layout(target)
    if "thm4.1" not in _bounds(target):
        raise KeyError(f"no weight bound of this signature for {normaliser}: its thm4.1 needs per-group reductions "
                       "beyond (g_sq, g_sum, g_yhat); multiply numeric.piecewise_callable('thm4.1', ...) by x_op_sq")
    bound = _bounds(target)["thm4.1"]
    if layout is GroupLayout.ROW:
        raise KeyError(f"no per-unit weight bound for {normaliser}: its groups are {layout.value} ({target.axis!r}), "
                       "so every column of dL-hat/dW mixes all groups; use layer_weight_grad_bound (whole matrix)")
    first = _G2 if layout is GroupLayout.COLUMN else dy_sq
    expr = x_op_sq * bound if layout is GroupLayout.COLUMN else bound.subs(_G2, x_op_sq * dy_sq)
    return sp.lambdify((x_op_sq, first, *_INVARIANT_ARGS[1:-1]), expr, "numpy")


@functools.cache
def layer_weight_grad_bound(normaliser: str):
    """f(x_op_sq, g_sq, g_sum, g_yhat, m, gamma, sigma) = ||X||_2^2 sum_k RHS_thm4.1(g_k) (thm4.4-per-layer).

    Bounds ||dL-hat/dW||_F^2 for a whole dense layer y = X W followed by the normaliser. The invariants
    are arrays whose LAST axis runs over the groups k of the layer (every group of every sample for
    LayerNorm/RMSNorm/GroupNorm; every unit for a batch-axis normaliser); the bound sums over it.
    """
    target = _normaliser(normaliser)
    if group_layout(target) is GroupLayout.WEIGHTS:
        raise KeyError(f"no layer bound for {normaliser}: its groups are weight vectors ({target.axis!r}), not "
                       "entries of y = XW; use weight_grad_bound (per unit)")
    per_group = sp.lambdify(_INVARIANT_ARGS[:-1], _bounds(target)["thm4.1"], "numpy")

    def bound(x_op_sq_value, g_sq, g_sum, g_yhat, m_value, gamma_value, sigma_value):
        terms = per_group(g_sq, g_sum, g_yhat, m_value, gamma_value, sigma_value)
        return np.asarray(x_op_sq_value) * np.sum(terms + np.zeros(np.shape(g_sq)), axis=-1)

    bound.__name__ = f"{target.name}_layer_weight_grad_bound"
    return bound


# --- the typed statements of thm4.2 and thm4.4 in measured quantities (verify's measured checks) -----

from theory import smoothness, weight_space


@functools.cache
def smoothness_bound(claim_id: str):
    """f(vHv, gHg, v_sq, g_yhat, m, gamma, sigma) = the right side of thm4.2 or thm4.2b as typed.

    vHv = v^T H v and gHg = g^T H g with H = d^2 L/dz^2 of one channel, v = grad_y L-hat, g = dL/dz,
    v_sq = ||v||^2: what `empirics.curvature` measures per BN channel.
    """
    forms = {"thm4.2": smoothness.first_form_rhs, "thm4.2b": smoothness.second_form_rhs}
    if claim_id not in forms:
        raise KeyError(f"no smoothness bound {claim_id!r}; known: {', '.join(forms)}")
    args = (smoothness.vHv, smoothness.gHg, smoothness.v_sq, g_hat, m, gamma, sigma)
    return sp.lambdify(args, forms[claim_id](), "numpy")


@functools.cache
def minimax_weight_bound(claim_id: str):
    """f(x_op_sq, g_sq, g_sum, g_yhat, m, gamma, sigma) = thm4.4's right side as typed (consistent or printed).

    Evaluated at the measured layer with lambda^2 = x_op_sq = ||X||_2^2 and g_j = lambda^2 ||g||^2 (the
    maximum over the spectral ball with the derivatives held fixed, the reading of `weight_space`).
    """
    forms = {"thm4.4": weight_space.consistent_form_typed, "thm4.4-printed": weight_space.printed_form_typed}
    if claim_id not in forms:
        raise KeyError(f"no minimax weight bound {claim_id!r}; known: {', '.join(forms)}")
    expr = forms[claim_id]().subs(weight_space.g_j, weight_space.lam**2 * _G2).subs(weight_space.lam**2, x_op_sq)
    expr = expr.subs(weight_space.lam, sp.sqrt(x_op_sq))
    return sp.lambdify((x_op_sq, *_INVARIANT_ARGS[:-1]), expr, "numpy")


# --- l1 / l-inf on one smooth piece (`piecewise`, `lp_bounds`): callables in named per-group reductions -----

from theory import oblique_projector, piecewise

_REDUCTION_NAMES = {**piecewise.INVARIANTS, m: "m", gamma: "gamma", sigma: "sigma", eps: "eps"}
_REDUCTION_ORDER = ("g_sq", "g_sum", "g_yhat", "g_sign", "sign_mean", "g_at_max", "sign_at_max", "yhat_sq", "m",
                    "gamma", "sigma", "eps")


def _piecewise_expression(claim_id: str, target) -> sp.Expr:
    # the oblique projector's pieces take seconds of SymPy: on disk like `_bounds`
    return cached(f"piecewise-{claim_id}", target, lambda: _piecewise_expression_of(claim_id, target))


def _piecewise_expression_of(claim_id: str, target) -> sp.Expr:
    derivation = piecewise.derive_piecewise(target)
    if claim_id == "grad_sq_norm":
        return derivation.in_sigma(derivation.grad_sq_norm)
    if claim_id == "thm4.1":
        return oblique_projector.bound_expression(derivation)
    if claim_id == "thm4.1-reduction":
        return gamma**2 / sigma**2 * (_G2 - _G1**2 / m)
    raise KeyError(f"no piecewise expression {claim_id!r}; known: grad_sq_norm, thm4.1, thm4.1-reduction")


@functools.cache
def piecewise_callable(claim_id: str, normaliser: str):
    """f(*reductions) for l1 / l-inf (any normaliser `piecewise.derive_piecewise` handles); f.reductions names them.

    claim_id: "grad_sq_norm" (||J^T g||^2, exact on the smooth piece), "thm4.1" (the own analogue's right side,
    (gamma^2/sigma^2) ||P||_2^2 (||g||^2 - <1,g>^2/m)) or "thm4.1-reduction" ((gamma^2/sigma^2)(||g||^2 - <1,g>^2/m)).
    The arguments are per-group reductions, in the order of f.reductions (`piecewise.REDUCTION_MEANINGS`):
        l1     grad_sq_norm: g_sq, g_sum, g_yhat, g_sign, sign_mean, m, gamma, sigma
               thm4.1:       g_sq, g_sum, sign_mean, yhat_sq, m, gamma, sigma, eps
        l-inf  grad_sq_norm: g_sq, g_sum, g_yhat, g_at_max, sign_at_max, m, gamma, sigma
               thm4.1:       g_sq, g_sum, yhat_sq, m, gamma, sigma, eps
    with g_sign = <g, sign(y - mu)>, sign_mean = mean(sign(y - mu)), g_at_max / sign_at_max = g and sign(y - mu)
    at a = argmax |y - mu|, yhat_sq = ||yhat||^2, sigma the normaliser's own scale. `piecewise_reductions`
    computes them for one group. Raises NoClosedForm for a normaliser with no smooth-piece closed form.
    """
    target = _normaliser(normaliser)
    expr = _piecewise_expression(claim_id, target)
    names = {name: symbol for symbol, name in _REDUCTION_NAMES.items() if symbol in expr.free_symbols}
    order = tuple(name for name in _REDUCTION_ORDER if name in names)
    function = sp.lambdify([names[name] for name in order], expr, "numpy")
    function.reductions = order
    function.__name__ = f"{target.name}_{claim_id.replace('.', '').replace('-', '_')}"
    return function


def piecewise_reductions(normaliser: str, batch, grad, eps_value: float) -> dict[str, float]:
    """Every reduction `piecewise_callable` may need, for one group (batch, grad of shape (m,)), in float64."""
    target = _normaliser(normaliser)
    derivation = piecewise.derive_piecewise(target)
    batch, grad = np.asarray(batch, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    sigma_value, yhat = scale_and_hat(normaliser, batch, eps_value, dims=(0,))
    stats = _statistics(target, "numpy", batch, lambda kind, term: np.mean(term) if kind == "mean" else np.max(term),
                        eps_value, batch.shape[0])
    centre = float(sp.lambdify([s for s, _ in target.statistics], derivation.centre)(*stats))
    signs = np.sign(batch - centre)
    top = int(np.argmax(np.abs(batch - centre)))
    return {"g_sq": float(grad @ grad), "g_sum": float(grad.sum()), "g_yhat": float(grad @ yhat),
            "g_sign": float(grad @ signs), "sign_mean": float(signs.mean()), "g_at_max": float(grad[top]),
            "sign_at_max": float(signs[top]), "yhat_sq": float(yhat @ yhat), "m": float(batch.shape[0]),
            "sigma": float(sigma_value[0]), "eps": float(eps_value)}


# --- what a measured check of a statement evaluates (verify.measured_statements) ---------------------------


def weight_layout(normaliser: str) -> str:
    """"column" (a group is one unit over the batch), "row" (inside one sample) or "weights" (a weight vector):
    where the normaliser's groups sit relative to y = X W (`weight_space.GroupLayout`), as a plain word."""
    return {GroupLayout.COLUMN: "column", GroupLayout.ROW: "row",
            GroupLayout.WEIGHTS: "weights"}[group_layout(_normaliser(normaliser))]


def activation_statement(claim_id: str, normaliser: str):
    """f(*reductions) = the right side of an activation-space statement of `normaliser`, evaluated on captured
    per-group reductions named by f.reductions (keys of an `empirics.capture` row): `activation_bound` where the
    statement has a closed form in (g_sq, g_sum, g_yhat), `piecewise_callable` for the l1 / l-inf analogues
    ("thm4.1", "thm4.1-reduction"). KeyError where the normaliser has no such statement."""
    target = _normaliser(normaliser)
    if claim_id in _bounds(target) and not (claim_id == "thm4.1-batchnorm-rhs"):
        function = _activation_bound(claim_id, target)
        reductions = ("g_sq", "g_sum", "g_yhat", "m", "gamma", "sigma")
    else:
        try:
            function = piecewise_callable(claim_id, normaliser)
        except (KeyError, NoClosedForm, ValueError) as reason:
            raise KeyError(f"no activation statement {claim_id!r} for {normaliser}: {reason}") from None
        reductions = function.reductions

    def bound(*values):
        return function(*values)

    bound.reductions = reductions
    bound.__name__ = f"{target.name}_{claim_id}"
    return bound


def grad_sq_norm_statement(normaliser: str):
    """f(g_sq, g_sum, g_yhat, m, gamma, sigma, eps) = ||J^T g||^2 in closed form (Fact C.1's norm), with
    f.reductions; KeyError for a normaliser without one (l1, l-inf)."""
    try:
        function = grad_sq_norm(normaliser)
    except NoClosedForm as reason:
        raise KeyError(f"no closed-form gradient norm for {normaliser}: {reason}") from None

    def closed(*values):
        return function(*values)

    closed.reductions = ("g_sq", "g_sum", "g_yhat", "m", "gamma", "sigma", "eps")
    return closed
