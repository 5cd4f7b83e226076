"""The policy-gradient estimators and the TRPO step that the meta-RL algorithms share.

Trajectories come as [B, E, T] tensors (B tasks, E episodes each, T steps) with a mask that is 1
for each step an episode took and 0 after it ended; every function here leaves the steps after
the end out by selecting, not multiplying by the mask, so no value there (even NaN) reaches a
result (a gradient through log-probabilities there still needs them finite).

- `discounted_returns`, `gae_advantages` (Schulman et al. 2016; lam=1 gives returns minus the
  baseline, MAML's choice), `normalized` (per task, as rllab's center_advantages: population
  standard deviation + 1e-8) and `policy_gradient_loss` (REINFORCE with a baseline, Williams 1992:
  the mean over the task's steps of log-probability times advantage, negated to be minimised).
- `LinearFeatureBaseline`: the linear value baseline of Duan et al. 2016 that MAML fits per
  task, as rllab's linear_feature_baseline.py (features, regulariser and its escalation), fitted
  in float64 by a Cholesky solve of the regularised normal equations. (In float64 the
  regularised equations of finite features factor, so the escalation is a guard, as rllab's.)
- The line search's defaults are learn2learn's (halving, 15 tries); rllab's MAML runs shrink by
  0.8 (backtrack_ratio=0.8), also 15 tries.
- `trpo_step` (Schulman et al. 2015, as rllab's ConjugateGradientOptimizer): the natural
  gradient by conjugate gradient on Fisher-vector products (the Hessian of the mean KL by double
  backward, damped as rllab's reg_coeff: Fv + 1e-5 v), scaled so the KL's quadratic model equals
  max_kl, then a backtracking line search. The closures may adapt the policy inside (MAML's
  second-order outer step), so the step only ever differentiates them with respect to
  `parameters`, and calls them with autograd on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: the features' time scale (rllab: t = step / 100)
TIME_SCALE = 100.0
#: observations are clipped to +-this before making features (rllab's)
OBSERVATION_CLIP = 10.0
#: rllab's starting regulariser and how many times it is raised x10 when the solve fails
BASELINE_REGULARISER = 1e-5
REGULARISER_RAISES = 10
#: added to the standard deviation when normalising advantages, and to the step's denominator
EPSILON = 1e-8


def took(values: Tensor, mask: Tensor) -> Tensor:
    """`values` at the steps the episodes took, 0 after they ended."""
    return torch.where(mask > 0, values, 0.0)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """sum over k >= t of gamma^(k - t) * reward_k, over the steps the episode took ([..., T]);
    0 after the episode ended."""
    steps = torch.arange(rewards.shape[-1], device=rewards.device)
    delay = steps.unsqueeze(0) - steps.unsqueeze(1)  # [t, k]: k - t
    discount = torch.where(delay >= 0, gamma ** delay.clamp(min=0).to(rewards.dtype), 0.0)
    return took(took(rewards, mask) @ discount.T, mask)


class LinearFeatureBaseline:
    """State values fitted by regularised least squares on the features
    [o, o^2, t, t^2, t^3, 1] (o the observation clipped to +-10, t = step / 100), one fit per
    task (Duan et al. 2016; rllab's LinearFeatureBaseline, reg_coeff 1e-5)."""

    @staticmethod
    def features(observations: Tensor) -> Tensor:
        """[..., T, d] observations -> [..., T, 2d + 4] features."""
        o = observations.clamp(-OBSERVATION_CLIP, OBSERVATION_CLIP)
        t = torch.arange(observations.shape[-2], dtype=observations.dtype,
                         device=observations.device) / TIME_SCALE
        t = t.expand(observations.shape[:-1]).unsqueeze(-1)
        return torch.cat([o, o ** 2, t, t ** 2, t ** 3, torch.ones_like(t)], dim=-1)

    @staticmethod
    @torch.no_grad()
    def fit_values(observations: Tensor, mask: Tensor, returns: Tensor) -> Tensor:
        """Each task's fitted values at its steps ([B, E, T]; 0 at masked steps), from
        observations [B, E, T, d], mask and returns [B, E, T]. Where the regularised normal
        equations are not positive definite in float64, or give a non-finite fit, that task's
        regulariser is raised x10 (rllab's escalation), up to 10 times."""
        features = LinearFeatureBaseline.features(observations.double())
        steps = took(features, mask.unsqueeze(-1)).flatten(1, 2)  # [B, E * T, k]
        gram = steps.mT @ steps
        moments = steps.mT @ took(returns.double(), mask).flatten(1).unsqueeze(-1)
        identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        regulariser = torch.full((gram.shape[0], 1, 1), BASELINE_REGULARISER,
                                 dtype=gram.dtype, device=gram.device)
        for _ in range(REGULARISER_RAISES + 1):
            factor, info = torch.linalg.cholesky_ex(gram + regulariser * identity)
            coefficients = torch.cholesky_solve(moments, factor)
            failed = (info > 0) | ~coefficients.isfinite().all(dim=(1, 2))
            if not failed.any():
                break
            regulariser = torch.where(failed[:, None, None], regulariser * 10, regulariser)
        values = (features.flatten(1, 2) @ coefficients).reshape(mask.shape)
        return took(values, mask).to(returns.dtype)


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float,
                   lam: float) -> Tensor:
    """Generalised advantage estimates ([..., T]): sum over l of (gamma lam)^l delta_(t+l), with
    delta_t = r_t + gamma V_(t+1) - V_t and V = 0 after the episode's last step (ended or cut
    by the horizon, as rllab's). lam=1: discounted returns minus values."""
    next_values = torch.cat([took(values[..., 1:], mask[..., 1:]),
                             torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + gamma * next_values - values
    return discounted_returns(deltas, mask, gamma * lam)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean over each task's (first dimension's) masked steps: [B, ...] -> [B]."""
    return took(values, mask).flatten(1).sum(1) / mask.flatten(1).sum(1)


def normalized(advantages: Tensor, mask: Tensor) -> Tensor:
    """Advantages centred and scaled per task (first dimension) over its masked steps: population
    standard deviation + 1e-8, as rllab's; 0 at masked steps."""
    shape = (-1,) + (1,) * (advantages.dim() - 1)
    mean = masked_mean(advantages, mask).reshape(shape)
    std = masked_mean((advantages - mean) ** 2, mask).sqrt().reshape(shape)
    return took((advantages - mean) / (std + EPSILON), mask)


def policy_gradient_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Each task's REINFORCE loss ([B]): minus the mean over its masked steps of
    log_prob * advantage (the advantages are taken as constants)."""
    return -masked_mean(log_probs * advantages.detach(), mask)


def conjugate_gradient(matrix_vector: Callable[[Tensor], Tensor], b: Tensor,
                       iterations: int = 10, residual_tol: float = 1e-10) -> Tensor:
    """x with A x = b for a symmetric positive definite A given as x -> A x (rllab's krylov.cg,
    Demmel p. 312), stopping early once the squared residual is below residual_tol."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_norm = residual @ residual
    for _ in range(iterations):
        if residual_norm < residual_tol:
            break
        product = matrix_vector(direction)
        alpha = residual_norm / (direction @ product)
        x += alpha * direction
        residual -= alpha * product
        new_norm = residual @ residual
        direction = residual + new_norm / residual_norm * direction
        residual_norm = new_norm
    return x


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


def fisher_vector_product(kl: Tensor, parameters: Sequence[Tensor],
                          damping: float = 1e-5) -> Callable[[Tensor], Tensor]:
    """v -> (H + damping I) v, H the Hessian of `kl` with respect to `parameters` (flattened, in
    order), by differentiating the gradient's product with v (Pearlmutter 1994)."""
    gradient = flat(torch.autograd.grad(kl, parameters, create_graph=True,
                                        materialize_grads=True))

    def product(vector: Tensor) -> Tensor:
        hessian_vector = torch.autograd.grad(gradient @ vector, parameters, retain_graph=True,
                                             materialize_grads=True)
        return flat(hessian_vector) + damping * vector
    return product


@torch.no_grad()
def set_flat(parameters: Sequence[Tensor], values: Tensor) -> None:
    """Copy the flat vector `values` into `parameters`, in place."""
    offset = 0
    for parameter in parameters:
        parameter.copy_(values[offset:offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()


def trpo_step(parameters: list[Tensor], surrogate: Callable[[], Tensor],
              kl: Callable[[], Tensor], max_kl: float = 0.01, damping: float = 1e-5,
              cg_iterations: int = 10, backtrack_ratio: float = 0.5,
              max_backtracks: int = 15) -> dict[str, float]:
    """One TRPO update of `parameters`, in place.

    surrogate(): the loss to minimise at the current parameter values; kl(): the mean
    KL(old || current), 0 at the start. The step is -s F^-1 g (F the damped Hessian of kl, g the
    surrogate's gradient, F^-1 g by `cg_iterations` of conjugate gradient) with s such that
    the quadratic model of the KL, s^2 d'Fd / 2, is max_kl (rllab: s = sqrt(2 max_kl /
    (d'Fd + 1e-8))). The line search tries the step times backtrack_ratio^k for k = 0 ..
    max_backtracks - 1 (rllab's loop) and keeps the first whose kl() <= max_kl and whose
    surrogate is below the starting one; if none is, the parameters are restored.

    Returns surrogate_before, surrogate_after and kl at the parameters left in place,
    backtracks (the k kept; max_backtracks when none was) and accepted (1.0 or 0.0).
    """
    loss = surrogate()
    gradient = flat(torch.autograd.grad(loss, parameters, materialize_grads=True))
    fisher = fisher_vector_product(kl(), parameters, damping)
    direction = conjugate_gradient(fisher, gradient, cg_iterations)
    step = (2 * max_kl / (direction @ fisher(direction) + EPSILON)).sqrt() * direction
    del fisher  # frees the KL's graph before the closures run again
    before = loss.item()
    start = flat(parameters).detach()
    for backtracks in range(max_backtracks):
        set_flat(parameters, start - backtrack_ratio ** backtracks * step)
        # not under no_grad: the closures may take gradients inside (an inner adaptation)
        after, divergence = surrogate().item(), kl().item()
        if after < before and divergence <= max_kl:
            return {"surrogate_before": before, "surrogate_after": after, "kl": divergence,
                    "backtracks": float(backtracks), "accepted": 1.0}
    set_flat(parameters, start)
    return {"surrogate_before": before, "surrogate_after": before, "kl": 0.0,
            "backtracks": float(max_backtracks), "accepted": 0.0}
