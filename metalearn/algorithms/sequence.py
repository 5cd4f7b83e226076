"""The sequence-episode protocol of the memory-augmented meta-learners (Santoro et al. 2016).

An episode is read as a sequence: at step t the network sees the image x_t with the previous
step's label y_{t-1} as a one-hot vector (zeros at t = 0), and predicts y_t. So a label arrives one
step late, and the network can only be right about a class after it has stored an earlier
example of it with its label. Labels are assigned to classes afresh in each episode (the sampler
permutes them), and the network's memory is wiped at the start of every sequence.

- Meta-training: the sequence is the training task's query examples, every class
  `episode.train_query_size` times in random order (the paper: 5 classes x 10 presentations).
  The loss is the cross-entropy at every step. Keep the sequences long: when every class
  appears exactly q times for a small q, the controller learns to predict late steps by counting
  the labels it has seen, with no image memory (measured with q = 2: training accuracy about
  45% after 1,000 steps, 5-way 1-shot accuracy 20%, chance).
- N-way K-shot evaluation (`adapt`, what results.json reports): the support set is
  the sequence; each query is then classified as the next element (with the last support label as
  its delayed label), every query from the same state, so queries do not see each other.
- Accuracy by presentation (the paper's table 1): at validation and test, the query examples of
  each episode are also run as one online sequence, and accuracy is reported by how many times
  the step's class had been shown before: `acc_presentation_1` (its first appearance),
  `_2`, `_3`, `_5`, `_10`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule, Predictor
from metalearn.data.episodes import TaskBatch
from metalearn.models.memory import MemoryNetwork

REPORTED_PRESENTATIONS = (1, 2, 3, 5, 10)


def delayed_labels(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot y_{t-1} for every step of [B, T] labels: [B, T, N], zeros at t = 0."""
    one_hot = F.one_hot(labels, num_classes).float()
    return torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], dim=1)


def presentation_numbers(labels: Tensor) -> Tensor:
    """How many times each step's class has appeared so far, this step included: [B, T] >= 1."""
    one_hot = F.one_hot(labels)
    return one_hot.cumsum(dim=1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def expand_state(state: Any, copies: int) -> Any:
    """Repeats a batch-of-one recurrent state (nested tuples of tensors) `copies` times."""
    if isinstance(state, Tensor):
        return state.expand(copies, *state.shape[1:])
    return type(state)(expand_state(part, copies) for part in state)


class SequenceEpisodeModule(EpisodicModule):
    """Base of MANN and the NTM as meta-learners: images through `backbone` (a Conv4, or a
    flattening MLP for raw pixels), then a memory network over the sequence.

    Subclasses set `self.network`, a MemoryNetwork with `self.sequence_input_size` inputs and
    `self.output_dim` outputs.
    """

    network: MemoryNetwork

    supports_other_train_way = False  # one output unit per class

    def __init__(self, backbone: nn.Module, **base_args):
        super().__init__(**base_args)
        self.backbone = backbone
        self.sequence_input_size = backbone.out_features + self.output_dim

    def sequence_inputs(self, x: Tensor, previous_labels: Tensor) -> Tensor:
        """[B, T, C, H, W] images and [B, T, N] delayed labels -> [B, T, features + N]."""
        features = self.backbone(x.flatten(0, 1)).view(*x.shape[:2], -1)
        return torch.cat([features, previous_labels.to(features.dtype)], dim=-1)

    def online_logits(self, x: Tensor, y: Tensor) -> Tensor:
        """Class scores at every step of the sequences (x, y): [B, T, N]."""
        return self.network(self.sequence_inputs(x, delayed_labels(y, self.output_dim)))

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        logits = self.online_logits(batch.query_x, batch.query_y)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, logits

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """Reads the support set as a sequence; each query is then the next step from that
        state, the last support label as its delayed label."""
        self.refuse_inner_steps(steps)
        network = self.network
        support = self.sequence_inputs(support_x.unsqueeze(0),
                                       delayed_labels(support_y.unsqueeze(0), self.output_dim))
        _, state = network.run(support, network.initial_state(1, support.device, support.dtype))
        last_label = F.one_hot(support_y[-1:], self.output_dim)

        def predict(query_x: Tensor) -> Tensor:
            previous = last_label.expand(len(query_x), -1).unsqueeze(1)
            queries = self.sequence_inputs(query_x.unsqueeze(1), previous).squeeze(1)
            logits, _ = network.step(queries, expand_state(state, len(query_x)))
            return logits

        return predict

    def extra_episode_scores(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Each episode's accuracy by presentation (`acc_presentation_<n>`), its queries run as
        one online sequence."""
        correct = (self.online_logits(batch.query_x, batch.query_y).argmax(-1) == batch.query_y)
        presentation = presentation_numbers(batch.query_y)  # [B, T]
        by_presentation = F.one_hot(presentation - 1).float()  # [B, T, P]
        accuracy = (correct.unsqueeze(-1) * by_presentation).sum(1) / by_presentation.sum(1)
        return {f"acc_presentation_{presentation}": accuracy[:, presentation - 1]
                for presentation in REPORTED_PRESENTATIONS if presentation <= accuracy.shape[1]}

    @property
    def validation_metrics(self) -> list[str]:
        return [*super().validation_metrics,
                *(f"val/acc_presentation_{n}" for n in REPORTED_PRESENTATIONS)]
