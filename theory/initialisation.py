"""lem4.5: favourable initialisation -- refuted as printed; repaired, it holds under its premise made explicit.

The lemma: with W*, What* the standard and BN optima closest to an initialisation W0, if <W0, W*> > 0,

    ||W0 - What*||^2 <= ||W0 - W*||^2 - (||W*||^2 - <W*, W0>)^2 / ||W*||^2.

Its algebra is the squared distance from W0 to the ray {c W* : c > 0}. Derived here for vectors of
symbolic dimension n (SymPy sums over i = 1..n, expanded and written in the three inner products
a = ||W0||^2, b = <W0, W*>, s = ||W*||^2 > 0):

    f(c) = ||W0 - c W*||^2 = a - 2 b c + s c^2,   f'' = 2 s > 0,   argmin c* = b / s  (> 0 iff b > 0),
    f(c*) = a - b^2/s,   and  f(c*) - [f(1) - (s - b)^2/s] simplifies to 0.

Without b > 0 the infimum over c > 0 is f(0+) = a, and a - RHS = b^2/s > 0: the bound fails for every
point of the ray (also checked by a search over random integer vectors, in the tests).

The lemma then needs every c W* (c > 0) to be an optimum of the BN network: the premise, which the
paper does not state, and which fails in general. Two records:

- `lem4.5` (as printed): refuted by exact counterexamples (`initialisation_counterexamples`): a
  reconstruction of the published one (Dannemann & Junike 2025) and the project's own, both in rational
  arithmetic. With W0 = W* the lemma claims ||W* - What*||^2 <= 0, i.e. that W* is a BN optimum.
- `lem4.5-repaired`: conditional on the premise, stated. Under it, What* is no farther than the closest
  point of the ray, and the ray identity is the lemma. `rescaled_optima` measures where the premise holds.
  It holds with equality when the closest BN optimum lies on the ray (one layer with bias); it says nothing
  new when the standard optima form a cone (a later layer absorbs the scale of W, as in any network of two
  or more layers): the closest W* then has f'(1) = 0, i.e. b = s, the improvement term (s - b)^2/s vanishes
  (derived), and the bound is dist(W0, BN optima) <= dist(W0, standard optima), which the premise alone gives.
"""

from __future__ import annotations

import functools

import sympy as sp

from theory import rescaled_optima
from theory.claims import ClaimResult, Status
from theory.initialisation_counterexamples import exact_from_experiment, published_reconstruction
from theory.derive import Derivation
from theory.weight_space import normalises_over_batch

a = sp.Symbol("a", nonnegative=True)  # ||W0||^2
b = sp.Symbol("b", real=True)  # <W0, W*>
s = sp.Symbol("s", positive=True)  # ||W*||^2 (W* != 0)
c = sp.Symbol("c", real=True)  # position on the line through W*

BOUND_LATEX = (r"\|W_0 - \hat{W}^*\|^2 \le \|W_0 - W^*\|^2 - \frac{(\|W^*\|^2 - \langle W^*, W_0\rangle)^2}"
               r"{\|W^*\|^2}")
STATEMENT_LATEX = r"\langle W_0, W^*\rangle > 0 \Rightarrow " + BOUND_LATEX
PREMISE_LATEX = r"c\,W^* \in \arg\min\hat{\mathcal{L}}\ \ \forall c > 0"
REPAIRED_LATEX = PREMISE_LATEX + r",\ \langle W_0, W^*\rangle > 0 \Rightarrow " + BOUND_LATEX


def squared_distance_along_line() -> sp.Expr:
    """f(c) = ||W0 - c W*||^2 in a, b, s, derived from sum_{i=1}^n (W0_i - c W*_i)^2 for symbolic n."""
    n = sp.Symbol("n", integer=True, positive=True)
    i = sp.Symbol("i", integer=True, positive=True)
    w0, w_star = sp.IndexedBase("W0", real=True), sp.IndexedBase("Wstar", real=True)
    expanded = sp.factor_terms(sp.Sum((w0[i] - c * w_star[i]) ** 2, (i, 1, n)).expand())
    products = {sp.Sum(w0[i] ** 2, (i, 1, n)): a, sp.Sum(w0[i] * w_star[i], (i, 1, n)): b,
                sp.Sum(w_star[i] ** 2, (i, 1, n)): s}
    f = sp.expand(expanded.subs(products))
    if f.has(sp.Sum):
        raise ValueError(f"||W0 - c W*||^2 did not reduce to inner products: {f}")
    return f


def lemma_rhs(f: sp.Expr) -> sp.Expr:
    """||W0 - W*||^2 - (||W*||^2 - <W*, W0>)^2 / ||W*||^2, with ||W0 - W*||^2 = f(1)."""
    return f.subs(c, 1) - (s - b) ** 2 / s


@functools.cache
def ray_identity() -> dict[str, sp.Expr]:
    """The derivation's pieces: f, its minimiser, the minimum, the residual against the lemma, and checks."""
    f = squared_distance_along_line()
    (minimiser,) = sp.solve(sp.diff(f, c), c)
    minimum = sp.simplify(f.subs(c, minimiser))
    b_positive = sp.Symbol("b_pos", positive=True)
    b_negative = sp.Symbol("b_neg", negative=True)
    return {
        "f": f,
        "curvature": sp.diff(f, c, 2),  # 2 s > 0: f is convex, the critical point is the global minimum
        "minimiser": minimiser,
        "minimiser_positive_if_b_positive": minimiser.subs(b, b_positive).is_positive,
        "minimum": minimum,
        "residual": sp.simplify(minimum - lemma_rhs(f)),
        # b < 0: f increases on c > 0 (f'(c) = 2(s c - b) > 0), so inf_{c>0} f = f(0) = a > RHS
        "slope_positive_on_ray_if_b_negative": sp.diff(f, c).subs({b: b_negative, c: sp.Symbol("c_pos", positive=True)})
        .is_positive,
        "excess_at_ray_start": sp.simplify(f.subs(c, 0) - lemma_rhs(f)),  # inf_{c>0} f - RHS when b <= 0
        "excess_positive_if_b_negative": sp.simplify(f.subs(c, 0) - lemma_rhs(f)).subs(b, b_negative).is_positive,
        # the closest point of a cone has f'(1) = 0; then the improvement term is 0
        "improvement_term_at_cone_projection": sp.simplify(((s - b) ** 2 / s).subs(b, sp.solve(
            sp.diff(f, c).subs(c, 1), b)[0])),
    }


@functools.cache
def premise_experiment() -> tuple[tuple[dict, ...], rescaled_optima.LemmaCounterexample | None]:
    """rescaled_optima.run_all(), once per process (it does not depend on the normaliser's symbols)."""
    summaries, failure = rescaled_optima.run_all()
    return tuple(summaries), failure


def _premise_text(summaries) -> str:
    holds = [r["case"] for r in summaries if r["premise_holds"]]
    fails = [f"{r['case']} (BN loss below the standard optimum by {r['standard_loss'] - r['bn_loss']:.3g}; lemma "
             f"violated for {r['lemma_violations']} of {r['inits_with_positive_inner_product']} initialisations)"
             for r in summaries if not r["premise_holds"]]
    return ("premise (unstated in the paper): every c W* with c > 0 is an optimum of the BN network, W being the "
            "weights feeding BN and every other parameter re-optimised. Held in: " + "; ".join(holds) + ". Failed in: "
            + "; ".join(fails) + ". It holds when the standard network has the affine freedom BN's beta adds "
            "(biases): then both reach the same functions; without biases BN's beta adds an intercept, the BN "
            "optimum is better and points elsewhere")


def _ray_text(pieces) -> str:
    return ("SymPy, symbolic dimension n: ||W0 - c W*||^2 = " + sp.sstr(pieces["f"]) + ", convex (f'' = "
            + sp.sstr(pieces["curvature"]) + "), minimised at c* = " + sp.sstr(pieces["minimiser"]) + " > 0 for b > 0; "
            "min - RHS simplifies to " + sp.sstr(pieces["residual"]) + "; for b < 0 the bound undercuts the ray by "
            + sp.sstr(pieces["excess_at_ray_start"]) + " > 0")


@functools.cache
def exact_counterexamples() -> tuple:
    """The published reconstruction (two W0) and the project's own violation, all in exact arithmetic."""
    _, failure = premise_experiment()
    own = (exact_from_experiment(failure),) if failure is not None else ()
    return published_reconstruction() + own


def _short(value) -> str:
    """An exact value as written when short, else to 6 significant digits (the exact one is in the record)."""
    text = str(value)
    return text if len(text) <= 12 else f"{float(value):.6g}"


def _printed(normaliser, pieces, summaries) -> ClaimResult:
    found = [c for c in exact_counterexamples() if (c.lhs - c.rhs) > 0]
    first = found[0] if found else None
    published = published_reconstruction()[0]
    gradients = published.facts["bn_gradient_at_W_star"]
    described = "; ".join(f"{c.source}: W0 = ({', '.join(_short(v) for v in c.W0)}), LHS = {_short(c.lhs)} > "
                          f"RHS = {_short(c.rhs)}" for c in found)
    return ClaimResult(
        claim="lem4.5", normaliser=normaliser.name, general_m=True, measured_check="refuted",
        status=Status.REFUTED if found else Status.CHECKED, counterexample=first,
        source="Lemma 4.5 (favourable initialisation) as printed, with its proof",
        statement_latex=STATEMENT_LATEX,
        assumptions=(r"W^* \ne 0", r"\text{BN: learnable } \gamma, \beta \text{ per unit, statistics over the batch}"),
        derived_latex=(rf"\min_{{c>0}}\|W_0 - cW^*\|^2 = {sp.latex(pieces['minimum'])} = \mathrm{{RHS}}\ (b > 0):\ "
                       r"\text{the lemma is the ray distance, so it needs } " + PREMISE_LATEX),
        slack_latex=r"W_0 = W^*:\ \mathrm{RHS} = 0, \text{ so the lemma claims } W^* \in \arg\min\hat{\mathcal{L}}",
        evidence=("exact counterexamples (rational arithmetic, eps = 0): " + described + ". The published one "
                  "(one neuron, identity activation, 3 points) is a RECONSTRUCTION matching its description: BN optima "
                  f"{published.facts['bn_optima']}, BN gradient at the standard optimum W* = ({', '.join(map(str, published.W_star))}) "
                  f"nonzero: ({', '.join(gradients['gamma_1_beta_0'])}) with gamma = 1, beta = 0; "
                  f"({', '.join(gradients['gamma_beta_optimal'])}) with them optimal. The proof's step "
                  "'every c W* is a BN optimum' is false there. " + _ray_text(pieces)
                  + f". In the premise experiment the lemma fails for "
                  + ", ".join(f"{r['lemma_violations']}/{r['inits_with_positive_inner_product']}" for r in summaries
                              if r["lemma_violations"]) + " initialisations of the cases without biases"),
        extra={"counterexamples": [c.as_dict() for c in found], "premise_experiment": list(summaries)},
    )


def _repaired(normaliser, pieces, summaries, algebra_ok: bool) -> ClaimResult:
    held = [r for r in summaries if r["premise_holds"]]
    sound = all(r["lemma_violations"] == 0 for r in held)
    cone = [r for r in held if r["hidden"]]
    return ClaimResult(
        claim="lem4.5-repaired", normaliser=normaliser.name, general_m=True, measured_check="conditional",
        status=Status.CONDITIONAL if algebra_ok and sound else Status.CHECKED,
        source="Lemma 4.5 with the premise its proof uses stated as a hypothesis",
        statement_latex=REPAIRED_LATEX,
        assumptions=(r"W^* \ne 0", r"\text{BN: learnable } \gamma, \beta \text{ per unit, statistics over the batch}"),
        conditions=(PREMISE_LATEX, r"\langle W_0, W^*\rangle > 0", _premise_text(summaries),
                    "W* and What* are the optima closest to W0"),
        derived_latex=(rf"\|W_0-\hat W^*\|^2 \le \min_{{c>0}}\|W_0 - cW^*\|^2 = {sp.latex(pieces['minimum'])}\ "
                       rf"\text{{at}}\ c^* = {sp.latex(pieces['minimiser'])},\quad a = \|W_0\|^2,\ b = \langle W_0,"
                       r"W^*\rangle,\ s = \|W^*\|^2"),
        slack_latex=(r"\min_{c>0}\|W_0-cW^*\|^2 - \mathrm{RHS} = " + sp.latex(pieces["residual"])
                     + r";\ \text{improvement term at the closest point of a cone of optima: }"
                     + sp.latex(pieces["improvement_term_at_cone_projection"])),
        equality=("equality iff the closest BN optimum lies on the ray {c W*}: e.g. one layer with bias, where the BN "
                  "optima are the line through W* (measured LHS/RHS: "
                  + ", ".join(f"{r['lemma_ratio_min']:.12g}..{r['lemma_ratio_max']:.12g}" for r in held if not r["hidden"])
                  + ")"),
        evidence=(_ray_text(pieces) + "; under the premise the closest BN optimum is no farther than the ray's closest "
                  "point, which is the lemma. Says nothing new when the standard optima form a cone (two or more "
                  "layers): at the closest W*, b = s and the improvement term is "
                  + sp.sstr(pieces["improvement_term_at_cone_projection"]) + " (SymPy), so the bound is "
                  "dist(W0, BN optima) <= dist(W0, standard optima), which the premise alone implies (measured "
                  "improvement/||W0 - W*||^2 median: " + ", ".join(f"{r['improvement_term_fraction_median']:.3g}" for r in cone)
                  + "); and nothing when <W0, W*> <= 0. Premise held in " + ", ".join(r["case"] for r in held)
                  + f" (no violation among {sum(r['inits_with_positive_inner_product'] for r in held)} initialisations "
                  "there); it fails without biases (lem4.5's counterexamples)"),
        extra={"premise_experiment": list(summaries),
               "improvement_term_at_cone_projection": sp.sstr(pieces["improvement_term_at_cone_projection"])},
    )


def result_key(normaliser) -> tuple:
    """What the records depend on: the paper's form and the batch axis (BatchNorm and l2 share them)."""
    return normaliser.statement_key(), normalises_over_batch(normaliser)


RESULT_KEY = result_key


def establish(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    normaliser = derivation.normaliser
    if not (normaliser.paper_form and normalises_over_batch(normaliser)):
        return {}
    pieces = ray_identity()
    summaries, _ = premise_experiment()
    algebra_ok = (pieces["residual"] == 0 and pieces["curvature"].is_positive
                  and pieces["minimiser_positive_if_b_positive"] is True)  # b <= 0 is excluded by the hypothesis
    return {"lem4.5": _printed(normaliser, pieces, summaries),
            "lem4.5-repaired": _repaired(normaliser, pieces, summaries, algebra_ok)}
