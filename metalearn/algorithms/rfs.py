"""RFS (Tian, Wang, Krishnan, Tenenbaum and Isola, "Rethinking Few-Shot Image Classification: a
Good Embedding Is All You Need?", ECCV 2020).

Pre-training: the backbone and a linear classifier over all meta-train classes, with
cross-entropy (section 3.2). A new task: logistic regression on the frozen backbone's
L2-normalised features of its support set (section 3.2 and the authors' `eval/meta_eval.py`:
scikit-learn's multinomial LogisticRegression with C = 1, an L2 penalty on the weights and none on
the intercepts), here solved by L-BFGS in torch for all the tasks of a test batch at once.

Self-distillation (section 3.3, "Born-again" rounds): with `distill_generations=G`, the training
epochs are split into G + 1 equal generations; each generation after the first starts from a newly
initialised network (and fresh optimiser state), and learns from the previous generation's final
network, frozen, as its teacher: loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)
at temperature T, with the paper's w = 0.5 and T = 4 (`distill_weight`, `distill_temperature`).
The test uses the last generation, as the paper's tables do, unless `test_ckpt=best` picks an
earlier one by its meta-val score.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.finetuning import Classifiers, FineTuningModule
from metalearn.data.episodes import ExampleBatch
from metalearn.errors import UserError, check_whole_number

#: scikit-learn's LogisticRegression(C=1.0): the inverse strength of the L2 penalty
INVERSE_PENALTY = 1.0
#: Newton steps at most, and the largest gradient entry at which a task's solution is found
NEWTON_STEPS, GRADIENT_TOLERANCE = 50, 1e-10
#: added to the Hessian's diagonal: the objective is flat along one direction (the same shift of
#: every class's intercept), along which the gradient is zero too
HESSIAN_RIDGE = 1e-9


def logistic_regression(features: Tensor, labels: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression of each task, as scikit-learn's LogisticRegression(C):
    minimises C * (sum of cross-entropies) + ||weight||^2 / 2 over [B, S, D] features and [B, S]
    labels; returns weight [B, N, D] and bias [B, N].

    The minimising weights lie in the span of the task's S features (any part outside it adds to
    the penalty and to no score), so with Q an orthonormal basis of that span, weight = V Q^T and
    the problem is the same one on the S coordinates Q^T x: small whatever the features' width.
    It is solved there by Newton's method in float64, all the tasks of a batch together.
    """
    tasks, size, _ = features.shape
    basis = torch.linalg.qr(features.double().transpose(1, 2)).Q  # [B, D, r], r = min(D, S)
    inputs = torch.cat([features.double() @ basis, features.new_ones(tasks, size, 1,
                                                                      dtype=torch.float64)], -1)
    width = inputs.shape[-1]  # r coordinates and the intercept's 1
    one_hot = F.one_hot(labels, n_way).double()
    penalised = torch.ones(width, dtype=torch.float64, device=features.device)
    penalised[-1] = 0  # no penalty on the intercept
    parameters = inputs.new_zeros(tasks, width, n_way)  # scikit-learn's start
    eye = torch.eye(width * n_way, dtype=torch.float64, device=features.device)
    for _ in range(NEWTON_STEPS):
        probabilities = (inputs @ parameters).softmax(-1)  # [B, S, N]
        gradient = (INVERSE_PENALTY * inputs.transpose(1, 2) @ (probabilities - one_hot)
                    + penalised.view(1, -1, 1) * parameters)
        if gradient.abs().amax() < GRADIENT_TOLERANCE:
            break
        # the softmax's curvature per example, diag(p) - p p^T, times x x^T
        softmax_curvature = torch.diag_embed(probabilities) - (
            probabilities.unsqueeze(-1) * probabilities.unsqueeze(-2))
        hessian = INVERSE_PENALTY * torch.einsum("bsj,bsk,bscd->bjckd", inputs, inputs,
                                                 softmax_curvature)
        hessian = hessian.reshape(tasks, width * n_way, width * n_way) + torch.diag_embed(
            penalised.repeat_interleave(n_way)) + HESSIAN_RIDGE * eye
        parameters = parameters - torch.linalg.solve(
            hessian, gradient.reshape(tasks, -1, 1)).view(tasks, width, n_way)
    weight = (basis @ parameters[:, :-1]).transpose(1, 2)
    return weight.to(features.dtype), parameters[:, -1].to(features.dtype)


class RFS(FineTuningModule):
    """Args:
        distill_generations: self-distillation rounds after the first training (0: none).
        distill_weight: the weight w of the distillation term (the paper: 0.5).
        distill_temperature: the softmax temperature T of distillation (the paper: 4).
    """

    def __init__(self, backbone: nn.Module, train_classes: int, batch_size: int = 64,
                 distill_generations: int = 0, distill_weight: float = 0.5,
                 distill_temperature: float = 4.0, outer_lr: float = 0.05, **base_args):
        super().__init__(backbone, train_classes, batch_size, outer_lr=outer_lr, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        check_whole_number("algorithm.distill_generations", distill_generations, minimum=0)
        if not 0 <= distill_weight <= 1:
            raise UserError(f"algorithm.distill_weight={distill_weight!r} must lie in [0, 1]")
        self.distill_generations = distill_generations
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        # the generation being trained, in checkpoints so that a resumed run knows it
        self.register_buffer("generation", torch.tensor(0))
        self.teacher = None
        if distill_generations:
            self.teacher = copy.deepcopy(nn.ModuleDict(
                {"backbone": self.backbone, "classifier": self.classifier})).requires_grad_(False)

    def pretraining_classifier(self, features: int, classes: int) -> nn.Module:
        return nn.Linear(features, classes)

    def task_features(self, x: Tensor) -> Tensor:
        return F.normalize(self.backbone(x), dim=-1)

    def fit_classifiers(self, support_features: Tensor, support_y: Tensor) -> Classifiers:
        weight, bias = logistic_regression(support_features, support_y,
                                           int(support_y.max()) + 1)
        return lambda query_features: torch.baddbmm(bias.unsqueeze(1), query_features,
                                                     weight.transpose(1, 2))

    # Self-distillation --------------------------------------------------------------------------
    def meta_train_loss(self, batch: ExampleBatch) -> tuple[Tensor, Tensor]:
        loss, scores = super().meta_train_loss(batch)
        if int(self.generation) == 0:
            return loss, scores
        self.teacher.eval()
        with torch.no_grad():
            teacher_scores = self.teacher["classifier"](self.teacher["backbone"](batch.x))
        t = self.distill_temperature
        distillation = F.kl_div(F.log_softmax(scores / t, dim=-1),
                                F.softmax(teacher_scores / t, dim=-1),
                                reduction="batchmean") * t * t
        return (1 - self.distill_weight) * loss + self.distill_weight * distillation, scores

    def epochs_per_generation(self) -> int:
        epochs = self.trainer.max_epochs
        generations = self.distill_generations + 1
        if epochs is None or epochs < 0 or epochs % generations:
            raise UserError(f"algorithm.distill_generations={self.distill_generations} splits the "
                            f"training epochs into {generations} generations; num_epochs="
                            f"{epochs} must be a multiple of {generations}")
        return epochs // generations

    def on_fit_start(self) -> None:
        if self.distill_generations:
            self.epochs_per_generation()  # refuses epochs that do not split, before training

    def on_train_epoch_start(self) -> None:
        if not self.distill_generations:
            return
        generation = min(self.current_epoch // self.epochs_per_generation(),
                         self.distill_generations)
        if generation > int(self.generation):
            self.start_generation(generation)
        self.log("train/generation", float(generation))

    def start_generation(self, generation: int) -> None:
        """The trained network becomes the teacher; the student starts again from a new
        initialisation (seeded by the run's seed and the generation) and a fresh optimiser."""
        self.teacher["backbone"].load_state_dict(self.backbone.state_dict())
        self.teacher["classifier"].load_state_dict(self.classifier.state_dict())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + generation)
            for module in [*self.backbone.modules(), *self.classifier.modules()]:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        self.generation.fill_(generation)
