"""Baseline (Chen, Liu, Kira, Wang and Huang, "A Closer Look at Few-shot Classification",
ICLR 2019, section 3.1).

Pre-training: the backbone and a linear classifier over all meta-train classes, trained with
cross-entropy on ordinary batches. A new task: the backbone is frozen and a new linear classifier
is trained on its support set's features. The fine-tuning follows the authors' code
(`methods/baselinefinetune.py`): 100 epochs of SGD (learning rate 0.01, momentum 0.9, dampening
0.9, weight decay 0.001) over mini-batches of 4 support examples, from nn.Linear's initialisation.

What differs, and why: the initial classifier and the mini-batch order come from a fixed seed, the
same for every task, so a task's classifier does not depend on which tasks it is evaluated with;
the tasks of a test batch are fine-tuned together (their losses summed, so that each gets its own
gradient, exactly as alone).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.finetuning import Classifiers, FineTuningModule
from metalearn.data.episodes import seeded_generator

#: the authors' fine-tuning optimiser, besides its learning rate
MOMENTUM, DAMPENING, WEIGHT_DECAY = 0.9, 0.9, 0.001
#: seeds the fine-tuned classifiers' initialisation and mini-batch order
FINETUNE_SEED = 0


class Baseline(FineTuningModule):
    """Args:
        finetune_epochs: passes over the support set when training a task's classifier.
        finetune_batch_size: support examples per fine-tuning step.
        finetune_lr: the fine-tuning SGD's learning rate.
    """

    def __init__(self, backbone: nn.Module, train_classes: int, batch_size: int = 64,
                 finetune_epochs: int = 100, finetune_batch_size: int = 4,
                 finetune_lr: float = 0.01, **base_args):
        super().__init__(backbone, train_classes, batch_size, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.finetune_epochs, self.finetune_batch_size = finetune_epochs, finetune_batch_size
        self.finetune_lr = finetune_lr

    def pretraining_classifier(self, features: int, classes: int) -> nn.Module:
        return nn.Linear(features, classes)

    def initial_heads(self, tasks: int, n_way: int, features: int,
                      generator: torch.Generator) -> list[Tensor]:
        """nn.Linear's initialisation (uniform within 1 / sqrt(fan-in)), the same for every task:
        [weight [B, N, D], bias [B, N]]."""
        bound = 1 / math.sqrt(features)
        weight = torch.empty(n_way, features).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(n_way).uniform_(-bound, bound, generator=generator)
        return [weight.expand(tasks, -1, -1), bias.expand(tasks, -1)]

    def head_scores(self, head: list[Tensor], features: Tensor) -> Tensor:
        """Class scores of each task's head for its features [B, M, D]: [B, M, N]."""
        weight, bias = head
        return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))

    def fit_classifiers(self, support_features: Tensor, support_y: Tensor) -> Classifiers:
        tasks, support_size, features = support_features.shape
        generator = seeded_generator(FINETUNE_SEED)
        head = [part.to(support_features).clone().requires_grad_()
                for part in self.initial_heads(tasks, int(support_y.max()) + 1, features,
                                               generator)]
        optimizer = torch.optim.SGD(head, lr=self.finetune_lr, momentum=MOMENTUM,
                                    dampening=DAMPENING, weight_decay=WEIGHT_DECAY)
        for _ in range(self.finetune_epochs):
            order = torch.randperm(support_size, generator=generator)
            for start in range(0, support_size, self.finetune_batch_size):
                picked = order[start:start + self.finetune_batch_size].to(support_y.device)
                scores = self.head_scores(head, support_features[:, picked])
                # each task's mean loss, summed: every task's head gets its own gradient
                loss = F.cross_entropy(scores.flatten(0, 1), support_y[:, picked].flatten(),
                                       reduction="sum") / len(picked)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        fitted = [part.detach() for part in head]
        return lambda query_features: self.head_scores(fitted, query_features)
