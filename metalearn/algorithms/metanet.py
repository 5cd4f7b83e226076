"""Meta Networks (Munkhdalai and Yu, ICML 2017), Algorithm 1 of the paper.

Two learners, each with slow weights (learned across tasks by the optimiser) and fast weights
(generated within a task from meta information, the loss gradients of the support set):

- the base learner b (slow W, example-level fast weights W*) classifies;
- the representation learner u (slow Q, task-level fast weights Q*) embeds examples as keys for
  the memory read that gives each query its fast weights;

and two meta networks, coordinate-wise across the weights they generate:

- d (slow G) maps u's meta information to Q*: for T pairs of support examples, the gradient of a
  verification loss, binary cross-entropy of sigmoid(w^T |u(x_1) - u(x_2)| + c) against
  "same class", with respect to the slow weights of u's augmented layer. d is an LSTM that reads
  the T pair gradients of each coordinate as a sequence (20 hidden units by default), and a
  linear read-out of its last hidden state is that coordinate's fast weight;
- m (slow Z) maps b's meta information to W*_i: for each support example i, the gradient of b's
  cross-entropy on (x'_i, y'_i) with respect to the slow weights of b's augmented layers. m is an
  MLP (2 -> H -> H -> 1, ReLU) applied to every coordinate alone.

Both read the gradients preprocessed as in Andrychowicz et al. 2016
(metalearn/models/gradient_preprocessing.py), as the paper does. Per task (Algorithm 1): Q* =
d({grad_t}_{t=1..T}) over the pairs (lines 2-7); for each support example, W*_i = m(grad_i), stored
in the memory M, with the key r'_i = u(Q, Q*, x'_i) stored in R (lines 8-15); each query x reads
its fast weights W* = softmax(cosine(R, u(Q, Q*, x)))^T M and is classified by b(W, W*, x) (lines
17-21). The training objective is the query cross-entropy, L_train (line 23); the support losses
only supply meta information.

Layer augmentation (section 3.3; the layers are in metalearn/models/fast_weights.py): an augmented
layer computes act(W x + b) + act(W* x + b*), the slow and the fast path summed after the
activation; its fast weights cover the bias too. Here both learners read the features of a Conv4
(`backbone`; u gets its own copy unless `share_backbone`) whose convolutions have slow weights
only, and the augmented layers are fully connected ones on top (the paper augments its convolutions
as well; on a CPU the fully connected ones keep the meta information small):

- b: augmented hidden layer (features -> `hidden_units`, ReLU), then the augmented output layer
  (-> n_way, no activation, softmax in the loss);
- u: one augmented layer (features -> `embedding_dim`, ReLU), whose output is the key.

Meta information is first order: the gradients are computed on detached copies and enter m and d
as constant inputs, as the paper treats them ("inputs" to the meta learner); the meta-gradient of
L_train flows through m, d, the keys, and b's and u's forward passes, not through the gradients'
own dependence on the slow weights. One consequence: the verifier's w and c would receive no
gradient, so they are fixed constants (w = -1/embedding_dim, c = 1: the logit is 1 minus the
mean absolute difference), not parameters.

What differs from the paper, and why: `cosine_scale` multiplies the cosines before the softmax
(1 is the paper's attention; ReLU keys have cosines in [0, 1], so unscaled attention is flat, as
with Matching Networks: on the test budget, tests/budgets.py METANET, scale 1 reached 80% and
scale 10 84%); the T pairs are all unordered pairs of distinct support examples
in support order (in 1-shot tasks they are all "different" pairs), not a random sample; BatchNorm
in the Conv4 sees the whole episode during training, as in the metric methods.

`use_fast_weights=False` drops every fast weight (equivalent to zeroing them, since
act(0 x + 0) = 0 for both activations): b and u then run on their slow weights alone, the
ablation that shows what the fast weights carry. With labels permuted in every episode, b's slow
weights alone cannot do better than chance.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule, Predictor
from metalearn.algorithms.metric import cosine_similarity
from metalearn.data.episodes import TaskBatch
from metalearn.models.fast_weights import (
    AugmentedLinear,
    LayerWeights,
    flatten_layers,
    read_memory,
    unflatten_layers,
)
from metalearn.models.gradient_preprocessing import preprocess


def distinct_pairs(num_examples: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """All unordered pairs (i, j), i < j, in order: T = n (n - 1) / 2."""
    first, second = torch.triu_indices(num_examples, num_examples, offset=1, device=device)
    return first, second


class TaskMemory(NamedTuple):
    """What a task's support set leaves: u's task-level fast weights Q* (None without pairs),
    b's example-level fast weights (the memory M, per layer [S, out, in] and [S, out]) and
    their keys (the memory R, [S, embedding_dim])."""

    task_fast: list[LayerWeights] | None
    fast_weights: list[LayerWeights]
    keys: Tensor


def reinitialise(module: nn.Module) -> None:
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


class MetaNet(EpisodicModule):
    """Args:
        backbone: Conv4 (or any flat-feature network) under b's augmented layers; u reads a
            freshly initialised copy of it unless share_backbone.
        hidden_units: width of b's augmented hidden layer.
        embedding_dim: width of u's augmented layer, the keys of the memory.
        meta_hidden_size: hidden units of m (an MLP, two hidden layers) and of d (an LSTM).
        preprocess_p: p of the gradient preprocessing of Andrychowicz et al. 2016.
        cosine_scale: multiplies the key cosines before the attention softmax (paper: 1).
        share_backbone: b and u read one Conv4 instead of one each (the paper has two networks).
        use_fast_weights: False runs b and u on their slow weights alone (the ablation).
    """

    supports_other_train_way = False  # b has one output unit per class

    def __init__(
        self,
        backbone: nn.Module,
        hidden_units: int = 64,
        embedding_dim: int = 64,
        meta_hidden_size: int = 20,
        preprocess_p: float = 10.0,
        cosine_scale: float = 10.0,
        share_backbone: bool = False,
        use_fast_weights: bool = True,
        **base_args,
    ):
        super().__init__(**base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.preprocess_p = preprocess_p
        self.cosine_scale = cosine_scale
        self.use_fast_weights = use_fast_weights
        features = backbone.out_features

        # the base learner b
        self.base_backbone = backbone
        self.base_layers = nn.ModuleList([
            AugmentedLinear(features, hidden_units, "relu"),
            AugmentedLinear(hidden_units, self.output_dim, "identity"),
        ])
        # the representation learner u
        if share_backbone:
            self.representation_backbone = backbone
        else:
            self.representation_backbone = copy.deepcopy(backbone)
            reinitialise(self.representation_backbone)
        self.representation_layer = AugmentedLinear(features, embedding_dim, "relu")
        # the verifier of u's embedding loss: constants (first-order meta information gives them
        # no gradient); logit = 1 - mean |u(x_1) - u(x_2)|
        self.register_buffer("verifier_weight", torch.full((embedding_dim,), -1.0 / embedding_dim))
        self.register_buffer("verifier_bias", torch.tensor(1.0))

        # m: example-level fast weights, coordinate-wise
        self.example_meta_learner = nn.Sequential(
            nn.Linear(2, meta_hidden_size), nn.ReLU(),
            nn.Linear(meta_hidden_size, meta_hidden_size), nn.ReLU(),
            nn.Linear(meta_hidden_size, 1),
        )
        # d: task-level fast weights, an LSTM over each coordinate's T pair gradients
        self.task_meta_lstm = nn.LSTM(2, meta_hidden_size, batch_first=True)
        self.task_meta_readout = nn.Linear(meta_hidden_size, 1)

    # Shapes ---------------------------------------------------------------------------------------
    def base_shapes(self) -> list[tuple[torch.Size, torch.Size]]:
        return [(layer.weight.shape, layer.bias.shape) for layer in self.base_layers]

    def representation_shapes(self) -> list[tuple[torch.Size, torch.Size]]:
        layer = self.representation_layer
        return [(layer.weight.shape, layer.bias.shape)]

    # The two learners -----------------------------------------------------------------------------
    def base_forward(self, features: Tensor, fast: Sequence[LayerWeights] | None = None,
                     slow: Sequence[LayerWeights] | None = None) -> Tensor:
        """b's augmented layers on backbone features: class scores [B, N]."""
        x = features
        for index, layer in enumerate(self.base_layers):
            x = layer(x, fast=None if fast is None else fast[index],
                      slow=None if slow is None else slow[index])
        return x

    def represent(self, features: Tensor, fast: Sequence[LayerWeights] | None = None,
                  slow: Sequence[LayerWeights] | None = None) -> Tensor:
        """u's augmented layer on backbone features: embeddings (keys) [B, embedding_dim]."""
        return self.representation_layer(features, fast=None if fast is None else fast[0],
                                         slow=None if slow is None else slow[0])

    def verification_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """w^T |u(x_1) - u(x_2)| + c for embedding pairs: the logit of "same class"."""
        return (first - second).abs() @ self.verifier_weight + self.verifier_bias

    # Meta information (constants) -------------------------------------------------------------------
    def example_meta_information(self, features: Tensor, labels: Tensor) -> list[LayerWeights]:
        """For each support example i, the gradient of b's cross-entropy on it alone with respect
        to the slow weights of b's augmented layers (Algorithm 1, lines 9-10), as constants:
        per layer ([S, out, in], [S, out]).

        Computed in one backward pass: each example gets its own copy of the slow weights, so the
        gradient of the summed losses with respect to copy i is example i's own gradient."""
        count = features.shape[0]
        with torch.enable_grad():  # also under Lightning's no_grad evaluation
            copies = [(w.detach().expand(count, *w.shape).clone().requires_grad_(),
                       b.detach().expand(count, *b.shape).clone().requires_grad_())
                      for w, b in (layer.slow_weights() for layer in self.base_layers)]
            loss = F.cross_entropy(self.base_forward(features.detach(), slow=copies), labels,
                                   reduction="sum")
            gradients = torch.autograd.grad(loss, [t for pair in copies for t in pair])
        return [(gradients[2 * i], gradients[2 * i + 1]) for i in range(len(copies))]

    def task_meta_information(self, features: Tensor, labels: Tensor) -> list[LayerWeights] | None:
        """For each pair t of distinct support examples, the gradient of the verification loss
        (binary cross-entropy against "same class") with respect to the slow weights of u's
        augmented layer (Algorithm 1, lines 2-6), as constants: ([T, out, in], [T, out]).
        None when the support set has a single example (no pairs)."""
        first, second = distinct_pairs(features.shape[0], features.device)
        count = first.numel()
        if count == 0:
            return None
        features = features.detach()
        layer = self.representation_layer
        with torch.enable_grad():
            weight = layer.weight.detach().expand(count, *layer.weight.shape).clone()
            bias = layer.bias.detach().expand(count, *layer.bias.shape).clone()
            slow = [(weight.requires_grad_(), bias.requires_grad_())]
            logits = self.verification_logits(self.represent(features[first], slow=slow),
                                              self.represent(features[second], slow=slow))
            same = (labels[first] == labels[second]).to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, same, reduction="sum")
            gradients = torch.autograd.grad(loss, [weight, bias])
        return [(gradients[0], gradients[1])]

    # The meta networks ------------------------------------------------------------------------------
    def example_fast_weights(self, gradients: Sequence[LayerWeights]) -> list[LayerWeights]:
        """m: W*_i = m(Z, grad_i), coordinate by coordinate; per layer ([S, out, in], [S, out])."""
        flat = flatten_layers(gradients, batch_dims=1)  # [S, P]
        fast = self.example_meta_learner(preprocess(flat, self.preprocess_p)).squeeze(-1)
        return unflatten_layers(fast, self.base_shapes())

    def task_fast_weights(self, gradients: Sequence[LayerWeights]) -> list[LayerWeights]:
        """d: Q* = d(G, {grad_t}_{t=1..T}); the LSTM reads each coordinate's T gradients in pair
        order, and its last hidden state gives the coordinate's fast weight."""
        flat = flatten_layers(gradients, batch_dims=1)  # [T, P]
        sequences = preprocess(flat.T, self.preprocess_p)  # [P, T, 2]
        _, (hidden, _) = self.task_meta_lstm(sequences)
        fast = self.task_meta_readout(hidden[-1]).squeeze(-1)  # [P]
        return unflatten_layers(fast, self.representation_shapes())

    def attention(self, keys: Tensor, queries: Tensor) -> Tensor:
        """softmax over the memory of the cosine similarities of each query to the keys: [Q, S]."""
        return F.softmax(self.cosine_scale * cosine_similarity(queries, keys), dim=-1)

    # One task ---------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone features for b and for u (one pass each over the given images)."""
        base = self.base_backbone(x)
        if self.representation_backbone is self.base_backbone:
            return base, base
        return base, self.representation_backbone(x)

    def task_memory(self, base_features: Tensor, representation_features: Tensor,
                    support_y: Tensor) -> TaskMemory:
        """Algorithm 1, lines 2-15, on one task's embedded support set."""
        # task-level fast weights Q* for u
        pair_gradients = self.task_meta_information(representation_features, support_y)
        task_fast = None if pair_gradients is None else self.task_fast_weights(pair_gradients)
        # example-level fast weights W*_i (memory M) and their keys r'_i (memory R)
        fast_weights = self.example_fast_weights(
            self.example_meta_information(base_features, support_y))
        keys = self.represent(representation_features, fast=task_fast)
        return TaskMemory(task_fast, fast_weights, keys)

    def classify(self, memory: TaskMemory | None, base_features: Tensor,
                 representation_features: Tensor) -> Tensor:
        """Algorithm 1, lines 17-21: each query reads its fast weights from M by attention over R
        and is classified by b; on slow weights alone without a memory. Class scores [Q, N]."""
        if memory is None:
            return self.base_forward(base_features)
        keys = self.represent(representation_features, fast=memory.task_fast)
        attention = self.attention(memory.keys, keys)
        return self.base_forward(base_features, fast=read_memory(attention, memory.fast_weights))

    def task_predictions(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Algorithm 1 for one task, support and query embedded in one pass: class scores of its
        queries [Q, N]."""
        n_support = support_x.shape[0]
        base, representation = self.embed(torch.cat([support_x, query_x]))
        memory = None
        if self.use_fast_weights:
            memory = self.task_memory(base[:n_support], representation[:n_support], support_y)
        return self.classify(memory, base[n_support:], representation[n_support:])

    # EpisodicModule ---------------------------------------------------------------------------------
    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        predictions = [self.task_predictions(task.support_x, task.support_y, task.query_x)
                       for task in batch.tasks()]
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), torch.stack(predictions)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        self.refuse_inner_steps(steps)
        memory = self.task_memory(*self.embed(support_x), support_y) if self.use_fast_weights \
            else None

        def predict(query_x: Tensor) -> Tensor:
            return self.classify(memory, *self.embed(query_x))

        return predict
