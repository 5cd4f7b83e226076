"""Biased matrix factorisation by ALS and fold-in (metalearn/data/matrix_factorization.py):
recovery of held-out ratings of a noisy low-rank matrix, the objective's descent, and fold-in
against the normal equations solved by np.linalg.lstsq."""

import numpy as np
import pytest

from metalearn.data.matrix_factorization import (
    BiasedMF,
    fit_biased_mf,
    fold_in,
    objective,
)

USERS, ITEMS, RANK, NOISE = 300, 200, 3, 0.3


def low_rank_ratings(seed: int = 0):
    """20% of a users x items matrix 3.5 + b_u + b_i + p_u . q_i (rank 3) + noise, as
    (users, items, ratings), in random order."""
    rng = np.random.default_rng(seed)
    user_bias, item_bias = rng.normal(0, 0.5, USERS), rng.normal(0, 0.5, ITEMS)
    p, q = rng.normal(0, 1, (USERS, RANK)), rng.normal(0, 1, (ITEMS, RANK))
    observed = rng.permutation(np.flatnonzero(rng.random(USERS * ITEMS) < 0.2))
    users, items = observed // ITEMS, observed % ITEMS
    ratings = (3.5 + user_bias[users] + item_bias[items] + np.einsum("nd,nd->n", p[users], q[items])
               + rng.normal(0, NOISE, len(observed)))
    return users, items, ratings


def test_recovers_held_out_ratings_of_a_low_rank_matrix():
    users, items, ratings = low_rank_ratings()
    held_out = np.random.default_rng(1).random(len(ratings)) < 0.1
    train = ~held_out
    model = fit_biased_mf(users[train], items[train], ratings[train], USERS, ITEMS, dim=RANK,
                          reg=1.0, bias_reg=1.0)
    predicted = np.array([model.predict(model.user_bias[u], model.user_factors[u], [i])[0]
                          for u, i in zip(users[held_out], items[held_out])])
    rmse = np.sqrt(np.mean((predicted - ratings[held_out]) ** 2))
    mean_rmse = np.sqrt(np.mean((ratings[train].mean() - ratings[held_out]) ** 2))
    # measured: 0.336 against the mean's 1.924 (the noise alone: 0.3)
    assert rmse < 0.45 and rmse < 0.25 * mean_rmse


def test_the_als_objective_never_increases():
    users, items, ratings = low_rank_ratings(seed=2)
    values = [objective(fit_biased_mf(users, items, ratings, USERS, ITEMS, dim=4, reg=2.0,
                                      iterations=t, bias_reg=0.5), users, items, ratings, 2.0, 0.5)
              for t in range(1, 9)]
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(values, values[1:]))
    assert values[-1] < 0.5 * values[0]


def test_fold_in_solves_the_ridge_normal_equations():
    users, items, ratings = low_rank_ratings(seed=3)
    model = fit_biased_mf(users, items, ratings, USERS, ITEMS, dim=4, iterations=3)
    rng = np.random.default_rng(4)
    new_items = np.r_[rng.choice(ITEMS, 6, replace=False), ITEMS + 7]  # the last never seen
    new_ratings = rng.normal(3.5, 1.0, 7)
    reg, bias_reg = 2.0, 0.5
    # augmented least squares: rows [1, q_i] -> r - mean - b_i, then sqrt(penalty) * identity -> 0
    known = new_items < ITEMS
    q = np.zeros((7, 4))
    q[known] = model.item_factors[new_items[known]]
    b_i = np.where(known, model.item_bias[np.minimum(new_items, ITEMS - 1)], 0.0)
    design = np.r_[np.c_[np.ones(7), q], np.diag(np.sqrt([bias_reg] + [reg] * 4))]
    target = np.r_[new_ratings - model.mean - b_i, np.zeros(5)]
    expected = np.linalg.lstsq(design, target, rcond=None)[0]
    bias, factors = fold_in(model, new_items, new_ratings, reg, bias_reg)
    np.testing.assert_allclose(np.r_[bias, factors], expected, rtol=0, atol=1e-8)
    # an unpenalised bias from one rating takes all of it: the factors' penalty leaves them zero
    bias, factors = fold_in(model, new_items[:1], new_ratings[:1], reg, bias_reg=0.0)
    np.testing.assert_allclose(factors, 0.0, atol=1e-12)
    assert model.predict(bias, factors, new_items[:1])[0] == pytest.approx(new_ratings[0])


def test_fold_in_of_a_training_user_gives_back_its_fitted_parameters():
    """The fit ends on the user half-step, which is fold_in for every user at once."""
    users, items, ratings = low_rank_ratings(seed=5)
    model = fit_biased_mf(users, items, ratings, USERS, ITEMS, dim=4, reg=2.0, iterations=4,
                          bias_reg=0.5)
    user = 17
    bias, factors = fold_in(model, items[users == user], ratings[users == user], 2.0, 0.5)
    assert bias == pytest.approx(model.user_bias[user], abs=1e-10)
    np.testing.assert_allclose(factors, model.user_factors[user], atol=1e-10)


def test_users_and_items_without_ratings_stay_zero():
    users, items, ratings = np.array([0, 0, 2]), np.array([0, 2, 2]), np.array([4.0, 3.0, 5.0])
    model = fit_biased_mf(users, items, ratings, 4, 4, dim=2, iterations=2)
    assert isinstance(model, BiasedMF)
    for unrated in (model.user_bias[[1, 3]], model.user_factors[[1, 3]],
                    model.item_bias[[1, 3]], model.item_factors[[1, 3]]):
        assert not unrated.any()
