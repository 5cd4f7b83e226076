"""The classical baselines that a recommender and a statistician would put beside a meta-learner
on new users or groups (`baselines`; scored by metalearn/run/classical_scores.py): each is fitted
on the meta-train rows only, then predicts every test episode's query rows from its support rows,
on exactly the learners' episodes.

- global_mean: the mean meta-train target; nothing adapts.
- item_mean: the item's (movie's) mean meta-train rating, damped towards the global mean.
- support_mean: the mean of the episode's support targets (a user's or group's own level).
- pooled: one ordinary least squares on every meta-train row; nothing adapts.
- group_ols, group_ridge: a linear regression on the episode's support rows alone.
- mixed_model: the linear mixed model (statsmodels MixedLM) fitted on the meta-train groups, a
  new group predicted by its conditional mode (BLUP) given its support rows: the statistician's
  answer, which pools the groups through the estimated spread of their intercepts and slopes.
- mf_fold_in: biased matrix factorisation on the meta-train users, the new user folded in from
  their support ratings (metalearn/data/matrix_factorization.py): the recommender's answer.

Features and targets are the learners' (standardised); predictions are in the same units.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import statsmodels.api as sm
import torch
from torch import Tensor

from metalearn.data.grouped import GroupedRows
from metalearn.data.matrix_factorization import fit_biased_mf, fold_in
from metalearn.errors import UserError, check_positive_number, check_whole_number

log = logging.getLogger(__name__)


def as_numpy(rows: GroupedRows, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features [n, f] and targets [n] of rows `index`, in float64."""
    return (rows.features.cpu().numpy()[index].astype(np.float64),
            rows.targets.cpu().numpy()[index, 0].astype(np.float64))


def with_intercept(features: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(features)), features]


class ClassicalBaseline(ABC):
    """A baseline's life: `fit` on the meta-train rows, then `predict` each episode's query rows
    from its support rows (row indices into the rows of the split tested)."""

    name: ClassVar[str]
    needs_items: ClassVar[bool] = False  # predicts from GroupedRows.items (MovieLens only)
    #: a linear function of the features, which must then be numbers or one-hot columns, not
    #: the integer codes of dataset.categorical_encoding=embedding
    linear_in_features: ClassVar[bool] = False

    @abstractmethod
    def fit(self, train: GroupedRows, feature_names: Sequence[str], k_shot: int) -> None:
        """Learns what the baseline keeps from the meta-train rows; k_shot: the support rows each
        test episode will have."""

    @abstractmethod
    def predict(self, data: GroupedRows, support: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The predictions [Q] for rows `query` of `data`, given rows `support` [K] of the same
        group with their targets."""

    def check(self, feature_names: Sequence[str]) -> None:
        """Refuses, in one line, settings that do not fit these feature columns (before any
        training: a run checks its baselines first)."""

    def require_items(self, rows: GroupedRows) -> Tensor:
        if rows.items is None:
            raise UserError(f"baselines.{self.name} predicts from the items rated, which only "
                            "dataset=movielens has; this dataset's rows are not items")
        return rows.items


class GlobalMean(ClassicalBaseline):
    """The mean meta-train target, for every row."""

    name = "global_mean"

    def fit(self, train, feature_names, k_shot):
        self.mean = float(train.targets.double().mean())

    def predict(self, data, support, query):
        return np.full(len(query), self.mean)


class ItemMean(ClassicalBaseline):
    """The item's mean meta-train target, damped: (sum of its targets + damping * global mean) /
    (its count + damping), a Bayesian average that treats the global mean as `damping` extra
    ratings. A movie rated once or twice by the meta-train users is otherwise predicted by those
    few ratings' noise; with damping 5 a movie needs about 5 ratings before its own mean counts
    for half. Measured on ml-latest-small's new users (query MSE, standardised ratings, 402
    episodes): damping 0.5: 0.885, 2: 0.873, 5: 0.867, 10: 0.867, 25: 0.874. An item no
    meta-train user rated gets the global mean."""

    name = "item_mean"
    needs_items = True

    def __init__(self, damping: float = 5.0):
        self.damping = check_positive_number("baselines.item_mean.damping", damping)

    def fit(self, train, feature_names, k_shot):
        items = self.require_items(train).cpu().numpy()
        targets = train.targets.cpu().numpy()[:, 0].astype(np.float64)
        self.global_mean = float(targets.mean())
        counts = np.bincount(items)
        sums = np.bincount(items, weights=targets)
        self.means = (sums + self.damping * self.global_mean) / (counts + self.damping)

    def predict(self, data, support, query):
        items = self.require_items(data).cpu().numpy()[query]
        known = items < len(self.means)
        return np.where(known, self.means[np.where(known, items, 0)], self.global_mean)


class SupportMean(ClassicalBaseline):
    """The mean of the episode's support targets: the new group's own level, nothing else."""

    name = "support_mean"

    def fit(self, train, feature_names, k_shot):
        pass

    def predict(self, data, support, query):
        return np.full(len(query), as_numpy(data, support)[1].mean())


class Pooled(ClassicalBaseline):
    """One ordinary least squares (with an intercept) on every meta-train row, blind to the
    groups: what the features say about any group, with no adaptation."""

    name = "pooled"
    linear_in_features = True

    def fit(self, train, feature_names, k_shot):
        features, targets = as_numpy(train, np.arange(len(train.targets)))
        self.coefficients = np.linalg.lstsq(with_intercept(features), targets, rcond=None)[0]

    def predict(self, data, support, query):
        return with_intercept(as_numpy(data, query)[0]) @ self.coefficients


class GroupOLS(ClassicalBaseline):
    """Ordinary least squares with an intercept on the episode's support rows alone. With fewer
    rows than coefficients (k <= features) the least-squares fits are many: this takes the one
    of minimum norm, intercept included (np.linalg.lstsq), which fits the support rows exactly
    and is what the pseudo-inverse gives."""

    name = "group_ols"
    linear_in_features = True

    def fit(self, train, feature_names, k_shot):
        pass

    def predict(self, data, support, query):
        features, targets = as_numpy(data, support)
        coefficients = np.linalg.lstsq(with_intercept(features), targets, rcond=None)[0]
        return with_intercept(as_numpy(data, query)[0]) @ coefficients


def ridge_fits(features: np.ndarray, targets: np.ndarray,
               alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regressions of targets [n] on features [n, f], one per alpha [A], the intercept
    unpenalised (sklearn's Ridge(fit_intercept=True)): intercepts [A], weights [A, f]. Solved
    on the centred rows by one SVD: w = V diag(s / (s^2 + alpha)) U' y_c."""
    mean_x, mean_y = features.mean(0), targets.mean()
    u, s, vt = np.linalg.svd(features - mean_x, full_matrices=False)
    shrink = s / (s ** 2 + alphas[:, None])                             # [A, min(n, f)]
    weights = (shrink * (u.T @ (targets - mean_y))) @ vt                # [A, f]
    return mean_y - weights @ mean_x, weights


class GroupRidge(ClassicalBaseline):
    """Ridge regression on the episode's support rows, the intercept unpenalised (one support
    row: its target). The penalty alpha is chosen in `fit` from `alphas` by the mean query MSE
    of `episodes` simulated k-shot episodes on the meta-train groups (a random group with more
    than k rows, k random rows of it as support, the others as query; seeded): the alpha suited
    to k rows of these features, never chosen on test groups."""

    name = "group_ridge"
    linear_in_features = True

    def __init__(self, alphas: Sequence[float] = tuple(10.0 ** np.arange(-2, 4.5, 0.5)),
                 episodes: int = 1000, seed: int = 0):
        if (isinstance(alphas, (str, int, float)) or not len(alphas)
                or any(not isinstance(alpha, (int, float)) or not alpha > 0 for alpha in alphas)):
            raise UserError(f"baselines.group_ridge.alphas={alphas!r} must be a list of numbers > 0")
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.episodes = check_whole_number("baselines.group_ridge.episodes", episodes)
        self.seed = seed

    def fit(self, train, feature_names, k_shot):
        counts = train.counts.numpy()
        eligible = np.flatnonzero(counts > k_shot)
        if len(eligible) == 0:
            raise UserError(f"baselines.group_ridge chooses its alpha on meta-train groups of "
                            f"more than episode.k_shot={k_shot} rows; the largest has "
                            f"{counts.max()}")
        rng = np.random.default_rng(self.seed)
        errors = np.zeros(len(self.alphas))
        offsets = train.offsets.numpy()
        for group in rng.choice(eligible, self.episodes):
            rows = offsets[group] + rng.permutation(counts[group])
            support, query = rows[:k_shot], rows[k_shot:]
            intercepts, weights = ridge_fits(*as_numpy(train, support), self.alphas)
            query_x, query_y = as_numpy(train, query)
            predictions = intercepts[:, None] + weights @ query_x.T       # [A, Q]
            errors += np.square(predictions - query_y).mean(1)
        self.alpha = float(self.alphas[np.argmin(errors)])
        log.info("group_ridge: alpha=%g chosen from %d values in [%g, %g] on %d simulated "
                 "%d-shot meta-train episodes", self.alpha, len(self.alphas), self.alphas.min(),
                 self.alphas.max(), self.episodes, k_shot)

    def predict(self, data, support, query):
        intercepts, weights = ridge_fits(*as_numpy(data, support), np.array([self.alpha]))
        return intercepts[0] + as_numpy(data, query)[0] @ weights[0]


class MixedModel(ClassicalBaseline):
    """The linear mixed model y = X beta + Z b + e over the meta-train groups (statsmodels
    MixedLM, REML): fixed effects an intercept and every feature; random effects b ~ N(0, G) per
    group, an intercept and a slope on each of `random_slopes` (feature names); e ~ N(0, s2 I).

    A new group's random effects are their conditional mode (the BLUP) given its support rows,
    from the fitted beta, G and s2 (Henderson; statsmodels' `random_effects` for a fitted group):
        b = G Z_s' (Z_s G Z_s' + s2 I)^-1 (y_s - X_s beta),   prediction X_q beta + Z_q b.
    With few support rows b is shrunk towards 0 (the population) by how much the groups differ
    (G) against the noise (s2): between the pooled model and a per-group fit, by the data.

    Fitting: statsmodels' BFGS first; where it does not converge or ends at a non-finite
    likelihood, Powell's method, then Nelder-Mead (on radon BFGS does not converge, Powell and
    Nelder-Mead agree, and L-BFGS, left out, reports convergence at an infinite likelihood
    with a zero county variance). Where no method
    converges with random slopes, the slopes are dropped (a warning says so) and the random
    intercept alone is fitted; where even that fails, G = 0 (a warning): the pooled model, whose
    BLUP is zero. A singular G (a variance estimated at zero, which the BLUP handles: no
    adaptation in that direction) is reported in one warning.
    """

    name = "mixed_model"
    linear_in_features = True
    METHODS = ("bfgs", "powell", "nm")

    def __init__(self, random_slopes: Sequence[str] = ()):
        self.random_slopes = tuple(random_slopes)

    def check(self, feature_names):
        unknown = [name for name in self.random_slopes if name not in feature_names]
        if unknown:
            raise UserError(f"baselines.mixed_model.random_slopes: {', '.join(unknown)} is not a "
                            f"feature column; the feature columns are: "
                            f"{', '.join(feature_names)}")

    def fit(self, train, feature_names, k_shot):
        names = list(feature_names)
        self.check(names)
        features, targets = as_numpy(train, np.arange(len(train.targets)))
        exog = with_intercept(features)
        groups = train.group_of_rows().numpy()
        slopes = [1 + names.index(name) for name in self.random_slopes]
        self.result = fit_mixed_lm(targets, exog, groups, exog[:, [0, *slopes]])
        if self.result is None and slopes:
            log.warning("mixed_model: MixedLM with random slopes on %s did not converge (%s); "
                        "fitted with a random intercept only", ", ".join(self.random_slopes),
                        ", ".join(self.METHODS))
            slopes = []
            self.result = fit_mixed_lm(targets, exog, groups, exog[:, :1])
        self.random_columns = [0, *slopes]
        if self.result is None:
            log.warning("mixed_model: MixedLM with a random intercept did not converge (%s); "
                        "predicting with the pooled least squares (no random effects)",
                        ", ".join(self.METHODS))
            self.beta = np.linalg.lstsq(exog, targets, rcond=None)[0]
            self.covariance = np.zeros((1, 1))
            self.noise = float(np.mean(np.square(targets - exog @ self.beta)))
            return
        self.beta = np.asarray(self.result.fe_params)
        self.covariance = np.asarray(self.result.cov_re)
        self.noise = float(self.result.scale)
        spread = np.linalg.eigvalsh(self.covariance)
        if spread.min() <= 1e-8 * max(spread.max(), self.noise):
            log.warning("mixed_model: the random-effects covariance is singular (eigenvalues "
                        "%s): new groups do not adapt in some direction of (%s)",
                        ", ".join(f"{value:.3g}" for value in spread),
                        ", ".join(["intercept", *(names[column - 1] for column in slopes)]))

    def conditional_mode(self, features: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """A group's random effects b [1 + slopes] given its rows (features [n, f], targets
        [n]): the BLUP in the class docstring."""
        design = with_intercept(features)
        z = design[:, self.random_columns]
        residual = targets - design @ self.beta
        marginal = z @ self.covariance @ z.T + self.noise * np.eye(len(targets))
        return self.covariance @ z.T @ np.linalg.solve(marginal, residual)

    def predict(self, data, support, query):
        effects = self.conditional_mode(*as_numpy(data, support))
        design = with_intercept(as_numpy(data, query)[0])
        return design @ self.beta + design[:, self.random_columns] @ effects


def fit_mixed_lm(targets: np.ndarray, exog: np.ndarray, groups: np.ndarray,
                 exog_re: np.ndarray):
    """MixedLM's REML fit by the first of MixedModel.METHODS that converges to a finite
    likelihood; None if none does. statsmodels' own warnings (non-convergence, a boundary
    estimate) are logged at debug level: what they mean is decided here."""
    model = sm.MixedLM(targets, exog, groups=groups, exog_re=exog_re)
    for method in MixedModel.METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = model.fit(reml=True, method=method)
            except (np.linalg.LinAlgError, ValueError) as error:
                log.debug("MixedLM (%s) failed: %s", method, error)
                continue
        for warning in caught:
            log.debug("MixedLM (%s): %s", method, warning.message)
        if result.converged and math.isfinite(result.llf):
            return result
    return None


class MFFoldIn(ClassicalBaseline):
    """Biased matrix factorisation (ALS) on the meta-train users' ratings, each meta-train group
    a user; a new user folded in from their support ratings (their items and targets), the item
    side fixed, and their query items predicted. The defaults are measured on ml-latest-small
    (metalearn/data/matrix_factorization.py): `reg` and `bias_reg` penalise the training
    factors and biases, `fold_in_reg` and `fold_in_bias_reg` a new user's."""

    name = "mf_fold_in"
    needs_items = True

    def __init__(self, dim: int = 16, reg: float = 10.0, bias_reg: float = 3.0,
                 fold_in_reg: float = 10.0, fold_in_bias_reg: float = 5.0,
                 iterations: int = 15, seed: int = 0):
        penalties = dict(reg=reg, bias_reg=bias_reg, fold_in_reg=fold_in_reg,
                         fold_in_bias_reg=fold_in_bias_reg)
        for key, value in penalties.items():
            check_positive_number(f"baselines.mf_fold_in.{key}", value)
        self.dim = check_whole_number("baselines.mf_fold_in.dim", dim, minimum=0)
        self.iterations = check_whole_number("baselines.mf_fold_in.iterations", iterations)
        self.reg, self.bias_reg = reg, bias_reg
        self.fold_in_reg, self.fold_in_bias_reg = fold_in_reg, fold_in_bias_reg
        self.seed = seed

    def fit(self, train, feature_names, k_shot):
        items = self.require_items(train).cpu().numpy()
        users = train.group_of_rows().numpy()
        targets = train.targets.cpu().numpy()[:, 0]
        self.model = fit_biased_mf(users, items, targets, train.num_groups,
                                   int(items.max()) + 1, dim=self.dim, reg=self.reg,
                                   iterations=self.iterations, seed=self.seed,
                                   bias_reg=self.bias_reg)

    def predict(self, data, support, query):
        items = self.require_items(data).cpu().numpy()
        bias, factors = fold_in(self.model, items[support], as_numpy(data, support)[1],
                                self.fold_in_reg, self.fold_in_bias_reg)
        return self.model.predict(bias, factors, items[query])


BASELINES: dict[str, type[ClassicalBaseline]] = {
    baseline.name: baseline for baseline in (GlobalMean, ItemMean, SupportMean, Pooled, GroupOLS,
                                             GroupRidge, MixedModel, MFFoldIn)}


def baseline_predictions(baseline: ClassicalBaseline, data: GroupedRows, rows: Tensor,
                         k_shot: int) -> Tensor:
    """A fitted baseline's predictions [E, Q, 1] (float32) for E episodes' query rows
    rows[:, k_shot:] from their support rows rows[:, :k_shot] (indices into `data`)."""
    episodes = rows.cpu().numpy()
    predictions = np.stack([baseline.predict(data, episode[:k_shot], episode[k_shot:])
                            for episode in episodes])
    return torch.from_numpy(predictions).float().unsqueeze(-1)
