"""Sharpness of the training loss: top Hessian eigenvalues by Lanczos, the Hutchinson trace, and the effective
sharpness of the scale-invariant layers (beyond the paper, issue 16).

Scope. theta = every trainable parameter flattened (n entries: weights, biases, BN gamma and beta), L(theta) the
training-mode loss on ONE probe batch B (the step's batch, or its first `batch` samples): train() mode, BN batch
statistics (biased variance, eps inside the root), running statistics neither used nor written, the noise of the
training forward replayed, the global RNG untouched (`landscape.training_function`). H = d^2 L / d theta^2, of
the active piece where ReLU / max-pool kinks make L piecewise smooth (what autograd differentiates).

    lambda_1 >= ... >= lambda_k   the k largest (algebraic) eigenvalues of H, "the sharpness" lambda_max =
                                  lambda_1 (Cohen et al. 2021; PyHessian, Yao et al. 2020): Lanczos with full
                                  reorthogonalisation, each Ritz value theta_i with its residual
                                  r_i = ||H v_i - theta_i v_i|| = beta_m |s_mi| (exact in exact arithmetic with
                                  full reorthogonalisation, no extra product; |lambda - theta_i| <= r_i) and
                                  converged_i = r_i <= rtol * max_j |theta_j| (rtol = SHARPNESS_RTOL: 1% of ||H||)
    tr H                          Hutchinson (1989): mean of z^T H z over Rademacher z, standard error
                                  std(z^T H z, ddof=1) / sqrt(N); with N >= n probes the exact trace from the n
                                  unit vectors instead (standard error 0, `trace_exact`)
    lambda_eff                    lambda_1(D H D), D = diag(||theta_G|| on each scale-invariant group G, 1
                                  elsewhere): the Hessian at the point where every scale-invariant group is
                                  rescaled to unit norm, which is D H D exactly where L(D phi) = L(phi). Rescaling
                                  a group by c maps H_GG to H_GG / c^2 and D_G to c D_G, so lambda_eff does not
                                  change while the raw lambda_max does (the "effective sharpness" / spherical
                                  sharpness of Lyu, Li and Arora 2022; the effective-learning-rate view eta/||W||^2
                                  of van Laarhoven 2017 and Arora, Li and Lyu 2019). Without scale-invariant
                                  groups D = I and lambda_eff = lambda_max (computed once).

Scale-invariant groups (`scale_invariant_groups`), from the tags `empirics.norms` puts on every normalisation
slot, no name lists: a slot with a registered `normaliser` on the batch, features or group axis normalises the
output of the last layer before it (in module order) that owns a weight of dimension >= 2 (the conv / linear map
y = W x + b); the group is that layer's parameters (W and b together: the normaliser divides by a scale
statistic of y, so y -> c y changes nothing). On the weight-space axis the group is the reparametrised layer's
direction `weight` (v in W = s hat(v)). Every candidate is checked on the probe batch: L with the group doubled
must equal L to INVARIANCE_RTOL (eps breaks exact invariance by ~eps / var): all candidates doubled together in
one forward, each alone only if that fails; a candidate that fails is not a group, and the relative gap of the
accepted groups is reported (`invariance_gap`).

Per-layer blocks (`blocks=True`): for every module owning parameters, lambda_1 of its diagonal block H_BB (Lanczos
on P_B H P_B from a start supported on B), of D_B H_BB D_B where B meets a scale-invariant group, and tr H_BB from
the same Hutchinson products (E[z_B . (H z)_B] = tr H_BB, no extra product).

Cost: the gradient's graph is built once (one forward+backward with the graph kept, ~2 of them) and every HVP
is the vjp of grad L with that graph (reverse over reverse, as `curvature.hessian_vector_product`: ~2.1-2.3
gradients each here, measured). Lanczos rows (raw, effective, blocks) advance in lockstep, their products in one
`torch.func.vmap` call per iteration, and the Hutchinson products in chunks of `chunk_size`: on this CPU a
vmapped HVP of 4-10 directions measured 0.6-0.7 of a single one on the VGG-1d and the DLN with BN, 0.7-1.1 on the
DLN without (the passes are overhead-bound). HVPs per
probe: iterations x (1 + [invariant groups exist]) + hutchinson_probes (`hvps` in the result). Why a torch
Lanczos and not scipy.sparse.linalg.eigsh on a LinearOperator: measured on
the default preset's trained networks (VGG-1d at batch 128, BN and none, lr 0.1 and 0.5, steps 100-600; the DLN
with and without BN), eigsh (k = 1, which="LA", tol = 1e-2) took 21 products on every probe (its default Krylov
space of ncv = 20 vectors is filled before the first convergence test), where this Lanczos met the 1% residual
test in 6-10 (VGG-1d) and 10-16 (the DLN with BN) and its top Ritz value was within 1% of the converged one by 8-10;
a fixed iteration count also gives the preset a fixed, priced cost, the raw and effective operators share each
product call, and the basis stays on the model's device in float64.

Randomness: the start vectors and probes come from `generator` (a torch.Generator the caller seeds from the run
seed and step, `probe_generator`), never from the run's streams; drawn on the CPU in float64, then moved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import grad, vjp, vmap

from .landscape import LossFn, Params, parameter_dict, training_function, training_loss
from .norms import norm_slots

SHARPNESS_RTOL = 1e-2  # a Ritz value is converged when its residual is <= 1% of the largest |Ritz value|
INVARIANCE_RTOL = 1e-3  # |L(2 theta_G) - L(theta)| / |L| below this: the group is scale-invariant (eps: ~eps/var)
INVARIANT_AXES = ("batch", "features", "group")  # axes whose normaliser divides its input's groups by a scale
BREAKDOWN = 1e-10  # beta_j / max|alpha| below this: the Krylov space is invariant, the Ritz values exact
_PURPOSES = {"lanczos": 1, "hutchinson": 2, "filter_landscape": 3}


def probe_generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """A CPU generator for one probe at one step, seeded from (run seed, step, purpose) by numpy's SeedSequence:
    independent of the run's own streams (init, batch order, noise), which it never touches."""
    state = np.random.SeedSequence([int(seed), int(step), _PURPOSES[purpose], 16]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ---------------------------------------------------------------- the flat parameter vector and its HVPs


@dataclass
class FlatLoss:
    """L as a function of one flat parameter vector (the model sees views of it), and its HVP operator.

    `names`, `sizes` say which slice of the vector is which parameter; `hvp(U)` maps (b, n) float64 directions
    to (b, n) float64 products H u, computed in the parameters' dtype through one graph of grad L (built here)."""

    names: list[str]
    sizes: list[int]
    flat: torch.Tensor
    hvp: Callable[[torch.Tensor], torch.Tensor]

    @property
    def n(self) -> int:
        return self.flat.numel()

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out


def flat_loss(model: nn.Module, params: Params, x: torch.Tensor, target: torch.Tensor, loss_fn: LossFn) -> FlatLoss:
    """The HVP operator of the training loss at `params`; call inside `landscape.training_function`."""
    names = list(params)
    sizes = [params[name].numel() for name in names]
    flat = torch.cat([params[name].reshape(-1) for name in names])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        views = {name: piece.view(params[name].shape) for name, piece in zip(names, vector.split(sizes))}
        return training_loss(model, views, x, target, loss_fn)

    _, pullback = vjp(grad(loss_of), flat)  # u -> (H u,): the graph of grad L is kept and reused

    def hvp(directions: torch.Tensor) -> torch.Tensor:
        u = directions.to(dtype=flat.dtype, device=flat.device)
        products = pullback(u[0])[0].unsqueeze(0) if u.shape[0] == 1 else vmap(lambda v: pullback(v)[0])(u)
        return products.double()

    return FlatLoss(names, sizes, flat, hvp)


# ---------------------------------------------------------------- Lanczos and Hutchinson on S H S


@dataclass(frozen=True)
class RitzValues:
    """The top-k Ritz values of one Lanczos row, with residuals ||A v - theta v|| and convergence flags (NaN /
    False beyond the row's dimension)."""

    values: np.ndarray  # (k,) descending
    residuals: np.ndarray  # (k,)
    converged: np.ndarray  # (k,) bool
    iterations: int


def lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], scales: torch.Tensor, iterations: int, top_k: int,
            generator: torch.Generator, rtol: float = SHARPNESS_RTOL) -> list[RitzValues]:
    """Top-k eigenvalues of A_i = S_i H S_i for each row S_i of `scales` (b, n) float64 (S_i diagonal), by
    Lanczos with full reorthogonalisation (classical Gram-Schmidt, twice), all rows in lockstep: one hvp call of
    the active rows per iteration. A row's start is Gaussian on S_i's support, so its Krylov space stays there
    (a 0/1 mask selects a diagonal block); it runs min(iterations, support size) steps, or stops early at an
    invariant subspace (beta below BREAKDOWN: its Ritz values are then exact, residual 0)."""
    rows, n = scales.shape
    device = scales.device
    support = scales != 0
    limits = [max(1, min(iterations, int(support[i].sum()))) for i in range(rows)]
    start = torch.randn(rows, n, generator=generator, dtype=torch.float64).to(device) * support
    bases = [torch.zeros(limits[i] + 1, n, dtype=torch.float64, device=device) for i in range(rows)]
    alphas: list[list[float]] = [[] for _ in range(rows)]
    betas: list[list[float]] = [[] for _ in range(rows)]
    for i in range(rows):
        bases[i][0] = start[i] / torch.linalg.vector_norm(start[i])
    done = [False] * rows
    for j in range(max(limits)):
        active = [i for i in range(rows) if not done[i] and j < limits[i]]
        if not active:
            break
        q = torch.stack([bases[i][j] for i in active])  # (a, n)
        products = hvp(q * scales[active]) * scales[active]  # row i: A_i q_i
        for row, i in enumerate(active):
            w = products[row]
            alphas[i].append(float(torch.dot(bases[i][j], w)))
            basis = bases[i][: j + 1]
            for _ in range(2):  # full reorthogonalisation; twice is enough (Giraud et al. 2005)
                w = w - basis.T @ (basis @ w)
            beta = float(torch.linalg.vector_norm(w))
            if beta <= BREAKDOWN * (max(abs(a) for a in alphas[i]) or 1.0):
                betas[i].append(0.0)  # an invariant subspace: the Ritz values are eigenvalues of A_i
                done[i] = True
                continue
            betas[i].append(beta)
            bases[i][j + 1] = w / beta
    return [_ritz(alphas[i], betas[i], top_k, rtol) for i in range(rows)]


def _ritz(alphas: list[float], betas: list[float], top_k: int, rtol: float) -> RitzValues:
    m = len(alphas)
    tridiagonal = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    theta, vectors = np.linalg.eigh(tridiagonal)
    order = np.argsort(theta)[::-1][:top_k]
    residuals = abs(betas[m - 1]) * np.abs(vectors[m - 1, order])
    values = np.full(top_k, np.nan)
    res = np.full(top_k, np.nan)
    values[: order.size], res[: order.size] = theta[order], residuals
    converged = np.zeros(top_k, dtype=bool)
    converged[: order.size] = residuals <= rtol * max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
    return RitzValues(values, res, converged, m)


def hutchinson(hvp: Callable[[torch.Tensor], torch.Tensor], n: int, probes: int, generator: torch.Generator,
               masks: torch.Tensor | None = None, chunk_size: int = 16, device=None) -> dict:
    """tr H (and tr H_BB for each 0/1 row of `masks` (B, n)) from `probes` Rademacher vectors: mean of z^T H z and
    its standard error; with probes >= n the exact traces from the n unit vectors (se 0, exact True)."""
    exact = probes >= n
    count = n if exact else probes
    samples, block_samples = [], []
    for begin in range(0, count, chunk_size):
        size = min(chunk_size, count - begin)
        if exact:
            z = torch.zeros(size, n, dtype=torch.float64)
            z[torch.arange(size), torch.arange(begin, begin + size)] = 1.0
        else:
            z = torch.randint(0, 2, (size, n), generator=generator, dtype=torch.int64).double() * 2 - 1
        z = z.to(device)
        hz = hvp(z)
        samples.append((z * hz).sum(1))
        if masks is not None:
            block_samples.append((z * hz) @ masks.T)  # (size, B): z_B . (H z)_B
    values = torch.cat(samples).cpu().numpy()
    out = {"trace": float(values.sum() if exact else values.mean()), "exact": exact, "probes": count,
           "trace_se": 0.0 if exact or count < 2 else float(values.std(ddof=1) / np.sqrt(count))}
    if masks is not None:
        blocks = torch.cat(block_samples).cpu().numpy()  # (count, B)
        out["block_trace"] = blocks.sum(0) if exact else blocks.mean(0)
        out["block_trace_se"] = (np.zeros(blocks.shape[1]) if exact or count < 2
                                 else blocks.std(0, ddof=1) / np.sqrt(count))
    return out


# ---------------------------------------------------------------- scale-invariant groups and blocks


@dataclass(frozen=True)
class InvariantGroup:
    """Parameters jointly scale-invariant: the layer feeding a normaliser (module doc)."""

    layer: str  # the module owning the parameters
    slot: str  # the normalisation slot it feeds
    names: tuple[str, ...]  # parameter names in the model


def _owns_linear_map(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.dim() >= 2


def invariant_candidates(model: nn.Module) -> list[InvariantGroup]:
    """The groups the tags name (module doc), before the numeric check; in module order."""
    slot_ids = {id(slot) for slot in norm_slots(model)}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    groups, last = [], None
    for name, module in model.named_modules():
        if id(module) in slot_ids and getattr(module, "normaliser", None) is not None:
            axis = getattr(module, "norm_axis", None)
            prefix = f"{name}." if name else ""
            if axis == "weight space" and f"{prefix}weight" in trainable:
                groups.append(InvariantGroup(name, name, (f"{prefix}weight",)))
            elif axis in INVARIANT_AXES and last is not None:
                layer, owner = last
                owned = tuple(f"{layer}.{p}" if layer else p for p, _ in owner.named_parameters(recurse=False))
                names = tuple(n for n in owned if n in trainable)
                if names and not any(set(names) & set(g.names) for g in groups):
                    groups.append(InvariantGroup(layer, name, names))
        if _owns_linear_map(module):
            last = (name, module)
    return groups


def scale_invariant_groups(model: nn.Module, params: Params, x: torch.Tensor, target: torch.Tensor,
                           loss_fn: LossFn) -> tuple[list[InvariantGroup], float]:
    """(the candidates whose doubling leaves L unchanged to INVARIANCE_RTOL, the relative gap |L(2 theta_G) - L| / |L|
    of the check that accepted them); call inside `landscape.training_function`.

    All candidates are doubled together first (one forward: what D needs is L(D phi) = L(phi) with every group
    scaled at once); only if that fails is each checked alone (one forward each) and the failures dropped."""
    candidates = invariant_candidates(model)
    if not candidates:
        return [], 0.0
    with torch.no_grad():
        base = float(training_loss(model, params, x, target, loss_fn))

        def gap(groups: list[InvariantGroup]) -> float:
            names = {name for group in groups for name in group.names}
            doubled = {name: p * 2 if name in names else p for name, p in params.items()}
            return abs(float(training_loss(model, doubled, x, target, loss_fn)) - base) / max(abs(base), 1e-30)

        joint = gap(candidates)
        if joint <= INVARIANCE_RTOL:
            return candidates, joint
        kept = [(group, g) for group in candidates if (g := gap([group])) <= INVARIANCE_RTOL]
        if not kept:
            return [], 0.0
        return [group for group, _ in kept], max(gap([group for group, _ in kept]), max(g for _, g in kept))


def parameter_blocks(model: nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """{owning module's name: its parameter names} in parameter order (the per-layer blocks)."""
    blocks: dict[str, list[str]] = {}
    for name in names:
        blocks.setdefault(name.rpartition(".")[0], []).append(name)
    return blocks


# ---------------------------------------------------------------- the probe


def _mask(flat: FlatLoss, names) -> torch.Tensor:
    mask = torch.zeros(flat.n, dtype=torch.float64, device=flat.flat.device)
    slices = flat.slices()
    for name in names:
        mask[slices[name]] = 1.0
    return mask


def effective_scales(flat: FlatLoss, groups: list[InvariantGroup]) -> torch.Tensor:
    """D as a vector: ||theta_G|| on every entry of group G (W and b together), 1 elsewhere."""
    scale = torch.ones(flat.n, dtype=torch.float64, device=flat.flat.device)
    slices = flat.slices()
    for group in groups:
        norm = torch.linalg.vector_norm(torch.cat([flat.flat[slices[name]] for name in group.names]).double())
        for name in group.names:
            scale[slices[name]] = norm
    return scale


def sharpness_probe(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, target: torch.Tensor, *,
                    generator: torch.Generator, top_k: int = 1, iterations: int = 10, hutchinson_probes: int = 8,
                    blocks: bool = False, rtol: float = SHARPNESS_RTOL, chunk_size: int = 16) -> dict:
    """lambda_1..k of H and of D H D, tr H, and (blocks) per-layer block values, on (x, target) (module doc).

    Returns float64 numpy values: eigenvalues, residuals, converged (k,), lambda_max; eff_eigenvalues,
    eff_residuals, eff_converged, lambda_eff; trace, trace_se, trace_exact; invariant_groups (count),
    invariant_norm_sq (sum of ||theta_G||^2), invariance_gap; lanczos_iterations, hutchinson_probes, hvps,
    n_params, batch; and with blocks: block_names, block_lambda, block_residual, block_converged, block_lambda_eff
    (NaN where the block meets no scale-invariant group), block_trace, block_trace_se.
    """
    if top_k < 1 or iterations < 1 or hutchinson_probes < 0:
        raise ValueError(f"top_k={top_k}, iterations={iterations} must be >= 1 and hutchinson_probes="
                         f"{hutchinson_probes} >= 0; the Lanczos space needs at least one vector")
    iterations = max(iterations, top_k)
    with training_function(model):
        params = parameter_dict(model)
        groups, gap = scale_invariant_groups(model, params, x, target, loss_fn)
        flat = flat_loss(model, params, x, target, loss_fn)
        ones = torch.ones(flat.n, dtype=torch.float64, device=flat.flat.device)
        d = effective_scales(flat, groups)
        rows = [ones] + ([d] if groups else [])
        block_rows: list[tuple[str, int, int | None]] = []  # (name, raw row, effective row or None)
        layer_blocks = parameter_blocks(model, flat.names) if blocks else {}
        grouped = {name for g in groups for name in g.names}
        for name, members in layer_blocks.items():
            mask = _mask(flat, members)
            rows.append(mask)
            effective = None
            if grouped & set(members):
                rows.append(mask * d)
                effective = len(rows) - 1
            block_rows.append((name, len(rows) - 1 - (effective is not None), effective))
        ritz = lanczos(flat.hvp, torch.stack(rows), iterations, top_k, generator, rtol)
        masks = torch.stack([rows[raw] for _, raw, _ in block_rows]) if block_rows else None
        trace = (hutchinson(flat.hvp, flat.n, hutchinson_probes, generator, masks, chunk_size, flat.flat.device)
                 if hutchinson_probes else {"trace": float("nan"), "trace_se": float("nan"), "exact": False,
                                            "probes": 0})
        norm_sq = float(sum(float(d[flat.slices()[g.names[0]]][0]) ** 2 for g in groups))
    raw, eff = ritz[0], ritz[1] if groups else ritz[0]
    result = {
        "eigenvalues": raw.values, "residuals": raw.residuals, "converged": raw.converged,
        "lambda_max": float(raw.values[0]),
        "eff_eigenvalues": eff.values, "eff_residuals": eff.residuals, "eff_converged": eff.converged,
        "lambda_eff": float(eff.values[0]),
        "trace": trace["trace"], "trace_se": trace["trace_se"], "trace_exact": bool(trace["exact"]),
        "invariant_groups": len(groups), "invariant_norm_sq": norm_sq, "invariance_gap": float(gap),
        "lanczos_iterations": raw.iterations, "hutchinson_probes": int(trace["probes"]),
        "hvps": int(sum(r.iterations for r in ritz) + trace["probes"]), "n_params": flat.n, "batch": int(x.shape[0]),
    }
    if blocks:
        result.update({
            "block_names": np.asarray([name for name, _, _ in block_rows]),
            "block_lambda": np.asarray([ritz[r].values[0] for _, r, _ in block_rows]),
            "block_residual": np.asarray([ritz[r].residuals[0] for _, r, _ in block_rows]),
            "block_converged": np.asarray([ritz[r].converged[0] for _, r, _ in block_rows]),
            "block_lambda_eff": np.asarray([ritz[e].values[0] if e is not None else np.nan for _, _, e in block_rows]),
            "block_trace": np.asarray(trace.get("block_trace", np.full(len(block_rows), np.nan))),
            "block_trace_se": np.asarray(trace.get("block_trace_se", np.full(len(block_rows), np.nan))),
        })
    return result


# ---------------------------------------------------------------- the schedule (empirics.probes)


def sharpness_due(every: int, levels: Sequence[float], trigger_levels: Sequence[float], step: int, level: int,
                  rows: list[dict]) -> tuple[bool, int]:
    """(whether the sharpness probe runs at `step`, the index into `levels` (descending) of the deepest sharpness
    level newly reached, or -1).

    It runs every `every` steps (0: never) and where the run's smoothed loss first reaches one of `levels`, a
    subset of the comparison probes' progress levels (`trigger_levels`, descending, whose deepest newly reached
    index at this step is `level`). A level is newly reached when its trigger index lies above the deepest trigger
    level of the rows recorded so far (the rows are checkpointed, so this needs no state of its own)."""
    periodic = every > 0 and step % every == 0
    ordered = sorted(levels, reverse=True)
    recorded = max((int(r["trigger_level"]) for r in rows), default=-1)
    reached = [j for j, value in enumerate(ordered) if recorded < list(trigger_levels).index(value) <= level]
    return periodic or bool(reached), max(reached, default=-1)


def check_levels(levels: Sequence[float], trigger_levels: Sequence[float]) -> None:
    missing = [value for value in levels if value not in trigger_levels]
    if missing:
        raise ValueError(f"sharpness_levels {missing} are not among the run's progress_levels {list(trigger_levels)}; "
                         "the sharpness probe fires where the comparison probes' trigger does: pick levels from it")


def table_arrays(prefix: str, records: list[dict]) -> dict[str, np.ndarray]:
    """Records with the same keys -> `<prefix>/<key>` arrays stacked over records (probes.npz columns)."""
    if not records:
        return {}
    return {f"{prefix}/{key}": np.asarray([r[key] for r in records]) for key in records[0]}
