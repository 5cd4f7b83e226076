"""Siamese Neural Networks for one-shot recognition (Koch, Zemel and Salakhutdinov, ICML 2015).

Twin copies of one embedding network read two images; a learned weighted L1 distance between the
two embeddings, p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b), is the probability that they show
the same class (section 3.1). The network is trained as a verifier, with binary cross-entropy on
balanced same/different pairs of meta-training images; N-way one-shot classification then picks
the class whose support image is most similar to the query (section 4.3), and K-shot the class
with the highest mean similarity over its K supports.

Pairs come from the meta-training episodes (so only from meta-train classes, through the same
seeded, resumable stream as every other algorithm): each query is paired with one support
example of its own class and one of another class, which balances them exactly. Validation and
testing also report the verification accuracy on the same kind of pairs (`pair_acc`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.metric import MetricModule
from metalearn.data.episodes import TaskBatch


def balanced_pairs(support_y: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs of one task as (query index, support index, same class): 2Q pairs, half of them same.

    Query j meets support example j mod K of its own class, and the same shot of the class whose
    label follows its own (mod N). Labels are a random permutation of the drawn classes in each
    episode, so that is a uniformly drawn other class.
    """
    num_classes = int(support_y.max()) + 1
    support_by_class = support_y.argsort(stable=True).view(num_classes, -1)  # [N, K] indices
    queries = torch.arange(query_y.shape[0], device=query_y.device)
    shot = queries % support_by_class.shape[1]
    same_class = support_by_class[query_y, shot]
    other_class = support_by_class[(query_y + 1) % num_classes, shot]
    same = torch.cat([torch.ones_like(queries), torch.zeros_like(queries)]).bool()
    return queries.repeat(2), torch.cat([same_class, other_class]), same


class SiameseNet(MetricModule):
    """Args:
        backbone: the twin embedding network.
    """

    def __init__(self, backbone: nn.Module, **base_args):
        super().__init__(backbone, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        # the alpha_j of the weighted L1 distance, and the bias
        self.distance_weights = nn.Linear(backbone.out_features, 1)

    def same_class_logits(self, query_features: Tensor) -> Tensor:
        """Logit of p(same class) for every (query, support) pair: [Q, S]."""
        distances = (query_features.unsqueeze(1) - self.support_features.unsqueeze(0)).abs()
        return self.distance_weights(distances).squeeze(-1)

    def class_scores(self, logits: Tensor) -> Tensor:
        """Mean same-class probability over each class's supports: [Q, N]."""
        return (logits.sigmoid() @ self.support_one_hot) / self.support_one_hot.sum(0)

    def score_queries(self, query_features: Tensor) -> Tensor:
        return self.class_scores(self.same_class_logits(query_features))

    def query_loss(self, query_features: Tensor, query_y: Tensor,
                   support_y: Tensor) -> tuple[Tensor, Tensor]:
        """Binary cross-entropy on the task's balanced pairs, and the queries' class scores."""
        logits = self.same_class_logits(query_features)
        queries, supports, same = balanced_pairs(support_y, query_y)
        loss = F.binary_cross_entropy_with_logits(logits[queries, supports], same.to(logits.dtype))
        return loss, self.class_scores(logits)

    def extra_episode_scores(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Verification accuracy on each episode's balanced pairs (N-way accuracy, every
        method's score, is the protocol's)."""
        pair_accuracy = []
        for task in batch.tasks():
            self.process_support_set(task.support_x, task.support_y)
            logits = self.same_class_logits(self.embed(task.query_x))
            queries, supports, same = balanced_pairs(task.support_y, task.query_y)
            pair_accuracy.append(((logits[queries, supports] > 0) == same).float().mean())
        return {"pair_acc": torch.stack(pair_accuracy)}

    @property
    def validation_metrics(self) -> list[str]:
        return [*super().validation_metrics, "val/pair_acc"]
