"""The batched backend of the gradient-based algorithms (metalearn/algorithms/backends.py): inner
loops of all the tasks of a meta-batch at once, on `torch.func`.

A task's adaptation is a pure function of the shared weights: `functional_call` runs the network
on explicit weight tensors, `torch.func.grad` takes the support loss's gradient, and the update
rule (SGD of one step size, Meta-SGD's per-coordinate rates, Adam) gives the next weights;
`vmap` runs that function for every task of the meta-batch in one pass of batched operations, and
ordinary autograd differentiates through it (second order) unless the gradients are detached
(first order). The per_task backend computes the same numbers task by task (a test holds the two
to 1e-8 in float64).

LayerNorm's kernel likewise had wrong second derivatives under vmap with an affine weight (29% in
float64): its scale and shift are applied outside it (`AffineLayerNorm`).

BatchNorm. The fused batch_norm kernel's second derivatives under vmap were 3e-2 off in float64,
so the network runs through a structural copy (its tensors on the meta device: every weight comes
from the caller) whose BatchNorm layers are written out in plain tensor operations
(`BatchStatisticsNorm`), exact to any order. In training mode they normalise with the batch's own
statistics and report them, so that the running averages can be updated afterwards in the order
the per_task backend updates them (every support pass of every inner step, then the query
pass, task after task); in eval mode they use the running averages.

A network that vmap cannot batch (an operation without a batching rule) is run task by task
through the same function, after one warning line.

Recomputing inner steps (`recompute=True`, MAML's `checkpoint_inner_steps`): second-order
meta-gradients keep every inner step's activations and gradient graph until the outer backward
pass. Instead, each step runs task by task under `torch.utils.checkpoint`, which keeps only the
step's input weights and runs the step again during the backward pass; torch.func's transforms
refuse its saved-tensor hooks, so these steps take their gradients with `torch.autograd.grad`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

Weights = dict[str, Tensor]
#: (next weights, gradient, step number 1, 2, ...) -> next weights; may keep state in a closure
UpdateRule = Callable[[Weights, Weights, int], Weights]


class BatchStatisticsNorm(nn.Module):
    """nn.BatchNorm{1,2,3}d written out. Training mode: the batch's own mean and (biased)
    variance, whose derivatives of every order are exact under vmap, and the batch's mean and
    unbiased variance kept in `reported` for the running averages; eval mode: the running
    averages. Its weights and buffers are the caller's (functional_call)."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.eps, self.momentum = source.eps, source.momentum
        self.affine, self.tracks = source.affine, source.track_running_stats
        for name, tensor in source.named_parameters(recurse=False):
            self.register_parameter(name, nn.Parameter(torch.empty_like(tensor, device="meta")))
        for name, tensor in source.named_buffers(recurse=False):
            self.register_buffer(name, None if tensor is None
                                 else torch.empty_like(tensor, device="meta"))
        self.reported: list[tuple[Tensor, Tensor]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if not self.training and self.tracks:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        dims = [0, *range(2, x.dim())]
        variance, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
        # one scale and shift per channel, then one pass over x: a single full-size tensor
        # kept for the backward pass, where writing out (x - mean) / std * weight + bias keeps four
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight.view(shape)
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias.view(shape)
        if self.reported is not None and self.tracks:
            count = x.numel() // x.shape[1]
            self.reported.append((mean.flatten().detach(),
                                  (variance.flatten() * count / max(count - 1, 1)).detach()))
        return torch.addcmul(shift, x, scale)


class AffineLayerNorm(nn.Module):
    """nn.LayerNorm with its scale and shift applied outside torch's kernel: with an affine
    weight, the kernel's second derivatives under vmap were wrong (29% relative in float64,
    torch 2.14; without one they are exact). Its weights are the caller's."""

    def __init__(self, source: nn.LayerNorm):
        super().__init__()
        self.normalized_shape, self.eps = source.normalized_shape, source.eps
        for name, tensor in source.named_parameters(recurse=False):
            self.register_parameter(name, nn.Parameter(torch.empty_like(tensor, device="meta")))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, self.normalized_shape, eps=self.eps)
        if getattr(self, "weight", None) is not None:
            x = x * self.weight
        return x + self.bias if getattr(self, "bias", None) is not None else x


#: the layers the functional copy writes out, and what it writes them as
WRITTEN_OUT = ((nn.modules.batchnorm._BatchNorm, BatchStatisticsNorm),
               (nn.LayerNorm, AffineLayerNorm))


def written_out(module: nn.Module) -> nn.Module | None:
    for kind, replacement in WRITTEN_OUT:
        if isinstance(module, kind):
            return replacement(module)
    return None


def functional_copy(network: nn.Module) -> nn.Module:
    """The network's structure without its tensors (meta device), BatchNorm and LayerNorm
    written out."""
    clone = copy.deepcopy(network).to("meta")
    if (replaced := written_out(clone)) is not None:
        return replaced
    for name, module in list(clone.named_modules()):
        if (replaced := written_out(module)) is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name), child, replaced)
    return clone


def norms(network: nn.Module) -> list[BatchStatisticsNorm]:
    return [m for m in network.modules() if isinstance(m, BatchStatisticsNorm)]


@dataclass
class FunctionalNetwork:
    """A network run functionally: its structure (`functional_copy`) called with weights the
    caller gives and the buffers of `module`, the network itself."""

    module: nn.Module
    structure: nn.Module = field(init=False)

    def __post_init__(self):
        self.structure = functional_copy(self.module)

    def weights(self) -> Weights:
        return dict(self.module.named_parameters())

    def buffers(self) -> Weights:
        return {name: b for name, b in self.module.named_buffers() if b is not None}

    def call(self, weights: Mapping[str, Tensor], x: Tensor, training: bool,
             report: bool = False) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The network's output on x with these weights (and the network's buffers), and the
        batch statistics its BatchNorm layers reported (when `report`)."""
        self.structure.train(training)
        layers = norms(self.structure)
        for layer in layers:
            layer.reported = [] if report else None
        try:
            output = functional_call(self.structure, {**self.buffers(), **weights}, (x,))
            return output, [stat for layer in layers for stat in (layer.reported or [])]
        finally:
            for layer in layers:
                layer.reported = None


def sgd(rates: Mapping[str, Tensor | float]) -> UpdateRule:
    """w - rate * g, with one step size or a rate per coordinate (Meta-SGD)."""
    return lambda weights, grads, step: {name: w - rates[name] * grads[name]
                                         for name, w in weights.items()}


def adam(lr: float, beta2: float = 0.999, eps: float = 1e-8) -> Callable[[], UpdateRule]:
    """A factory of Adam with beta1 = 0 (Reptile's inner optimiser, as torch.optim.Adam computes
    it), its second moments kept in the closure of each fresh rule."""
    def rule() -> UpdateRule:
        moments: Weights = {}

        def update(weights: Weights, grads: Weights, step: int) -> Weights:
            new = {}
            for name, w in weights.items():
                g = grads[name]
                moments[name] = (beta2 * moments[name] + (1 - beta2) * g * g
                                 if name in moments else (1 - beta2) * g * g)
                denominator = moments[name].sqrt() / (1 - beta2**step) ** 0.5 + eps
                new[name] = w - lr * g / denominator
            return new
        return update
    return rule


#: BatchNorm statistics reported by passes: [passes x layers] of (mean, unbiased variance), with a
#: leading task dimension once batched
Stats = list[tuple[Tensor, Tensor]]


def running_norms(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers that keep running averages, in module order (the order
    `FunctionalNetwork.call` reports their statistics)."""
    return [
        m for m in network.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def update_running_averages(layers: list[nn.modules.batchnorm._BatchNorm], stats: Stats) -> None:
    """Applies reported statistics [passes x layers], each (mean [T, C], variance [T, C]) of T
    tasks, to the layers' running averages task by task, pass by pass, as the per_task backend's
    passes update them."""
    if not layers or not stats:
        return
    with torch.no_grad():
        for task in range(stats[0][0].shape[0]):
            for position, (mean, variance) in enumerate(stats):
                layer = layers[position % len(layers)]
                momentum = layer.momentum if layer.momentum is not None else (
                    1.0 / float(layer.num_batches_tracked + 1))
                layer.running_mean.mul_(1 - momentum).add_(momentum * mean[task])
                layer.running_var.mul_(1 - momentum).add_(momentum * variance[task])
                layer.num_batches_tracked += 1


def stacked_stats(per_task: list[Stats]) -> Stats:
    """Each task's reported statistics stacked along a first dimension, as vmap returns them."""
    return [tuple(torch.stack([task[i][j] for task in per_task]) for j in range(2))
            for i in range(len(per_task[0]))]


@dataclass
class Adaptation:
    """What TaskBatchedLoop.adapt returns for T tasks."""

    weights: Weights  # the adapted weights, [T, ...] each
    stats: Stats  # BatchNorm statistics of the support passes (training mode)
    loss: Tensor  # [T]: each task's support loss at the last step, before its update
    outputs: Tensor  # [T, S, ...]: the network's outputs at that step


class TaskBatchedLoop:
    """Adapts a network to every task of a batch at once and predicts their queries.

    Args:
        network: the adapted network (its weights named in `adapted`).
        loss_fn: the support loss.
    """

    def __init__(self, network: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.network = FunctionalNetwork(network)
        self.loss_fn = loss_fn
        self.batched = True  # until vmap fails on this network

    def update_running_averages(self, *passes: Stats) -> None:
        """The BatchNorm running averages updated with the statistics of these passes, in
        order (the per_task backend's: all tasks' support passes, then their queries)."""
        for stats in passes:
            update_running_averages(running_norms(self.network.module), stats)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int,
              rule: Callable[[], UpdateRule], first_order: bool, training: bool,
              adapted_names: set[str] | None = None, recompute: bool = False) -> Adaptation:
        """Adapts to each task of support [T, S, ...] in `steps` steps of a fresh rule():
        the adapted weights [T, ...], the batch statistics the support passes reported (when
        training), and the last step's loss [T] and outputs [T, S, ...] (before its update).
        `recompute` (second order, a stateless rule): each step's activations are recomputed
        in the backward pass instead of kept, task by task."""
        weights = self.network.weights()
        adapted = {name: w for name, w in weights.items()
                   if adapted_names is None or name in adapted_names}
        fixed = {name: w for name, w in weights.items() if name not in adapted}

        def task(x: Tensor, y: Tensor) -> tuple[Weights, Stats, Tensor, Tensor]:
            current, update, stats = dict(adapted), rule(), []
            loss = output = x.new_zeros(())  # no step, no last step
            for step in range(1, steps + 1):
                def support_loss(trainable: Weights):
                    output, reported = self.network.call({**fixed, **trainable}, x, training,
                                                       training)
                    loss = self.loss_fn(output, y)
                    return loss, (reported, loss.detach(), output.detach())
                grads, (reported, loss, output) = grad(support_loss, has_aux=True)(current)
                stats += reported
                if first_order:
                    grads = {name: g.detach() for name, g in grads.items()}
                current = update(current, grads, step)
            return current, stats, loss, output

        def recomputed_step(current: Weights, x: Tensor, y: Tensor, step: int,
                            update: UpdateRule) -> tuple[Weights, Stats, Tensor, Tensor]:
            output, reported = self.network.call({**fixed, **current}, x, training, training)
            loss = self.loss_fn(output, y)
            names = list(current)
            grads = torch.autograd.grad(loss, [current[name] for name in names],
                                        create_graph=True, allow_unused=True)
            grads = {name: torch.zeros_like(current[name]) if g is None else g
                     for name, g in zip(names, grads)}
            return update(current, grads, step), reported, loss.detach(), output.detach()

        def recomputed_task(x: Tensor, y: Tensor) -> tuple[Weights, Stats, Tensor, Tensor]:
            current, update, stats = dict(adapted), rule(), []
            loss = output = x.new_zeros(())
            for step in range(1, steps + 1):
                current, reported, loss, output = checkpoint(
                    recomputed_step, current, x, y, step, update, use_reentrant=False)
                stats += reported
            return current, stats, loss, output

        recompute = recompute and not first_order  # first order keeps no graph to save
        if self.batched and not recompute:
            try:
                return Adaptation(*vmap(task, randomness="different")(support_x, support_y))
            except (RuntimeError, NotImplementedError) as error:
                # if it fails task by task too, that error is the network's own
                log.warning("this network cannot be batched over tasks (%s); the batched "
                            "backend runs it task by task", str(error).strip().splitlines()[0])
                self.batched = False
        one_task = recomputed_task if recompute else task
        weights, stats, loss, output = zip(*(one_task(x, y)
                                             for x, y in zip(support_x, support_y)))
        return Adaptation({name: torch.stack([w[name] for w in weights]) for name in weights[0]},
                          stacked_stats(stats), torch.stack(loss), torch.stack(output))

    def predict(self, adapted: Weights, query_x: Tensor, training: bool,
                report: bool = False, batched: bool = True) -> tuple[Tensor, Stats]:
        """Predictions [T, Q, ...] of the adapted weights [T, ...] on query [T, Q, ...], and the
        batch statistics of the pass (when `report`); task by task unless `batched` (the
        batched pass keeps several times the memory for the backward pass)."""
        weights = self.network.weights()
        fixed = {name: w for name, w in weights.items() if name not in adapted}

        def task(current: Weights, x: Tensor) -> tuple[Tensor, Stats]:
            return self.network.call({**fixed, **current}, x, training, report)

        # autocast does not reach inside vmap (torch 2.x): mixed-precision queries run one by one
        if batched and self.batched and not torch.is_autocast_enabled(query_x.device.type):
            return vmap(task, randomness="different")(adapted, query_x)
        outputs = [task({n: w[t] for n, w in adapted.items()}, x) for t, x in enumerate(query_x)]
        return torch.stack([o[0] for o in outputs]), stacked_stats([o[1] for o in outputs])
