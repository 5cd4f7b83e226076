"""A torchvision classification network, by builder name, as a backbone.

Its classification layer is removed so that it returns features; with `flatten=False` it returns
the feature maps that enter its global average pooling instead. Nothing is downloaded: the
network starts from torchvision's random initialisation, or from a local state_dict file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision.models
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from metalearn.errors import UserError

#: the attributes that hold the classification head of torchvision's networks
HEAD_NAMES = ("fc", "classifier", "heads", "head")


def classification_models() -> list[str]:
    """torchvision's image classifiers (list_models() without a module also lists detection,
    segmentation, video and quantized networks, which do not return image features)."""
    return torchvision.models.list_models(module=torchvision.models)


def remove_auxiliary_heads(model: nn.Module) -> None:
    """GoogLeNet and Inception v3 also classify from intermediate layers in training mode."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, name):
                setattr(model, name, None)


def remove_classifier(model: nn.Module, name: str) -> None:
    """Replaces the last layer with weights (Linear, or SqueezeNet's 1x1 conv) of the model's head
    by nn.Identity, keeping the layers before it (VGG's, MobileNetV3's hidden layers): the
    network then returns what its classifier saw."""
    head_name = next((n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)),
                     None)
    if head_name is None:
        raise UserError(f"backbone.name={name} has no classification head to remove (none of "
                        f"{', '.join(HEAD_NAMES)}); choose another network")
    head = getattr(model, head_name)
    layers = [n for n, m in head.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers or layers[-1] == "":
        setattr(model, head_name, nn.Identity())
        return
    parent_name, _, child = layers[-1].rpartition(".")
    setattr(head.get_submodule(parent_name), child, nn.Identity())


def feature_map_extractor(model: nn.Module, name: str) -> nn.Module:
    """The network up to the input of its global average pooling, a module named `avgpool`."""
    nodes = get_graph_node_names(model)[1]
    if "avgpool" not in nodes:
        raise UserError(
            f"backbone.flatten=false needs the feature maps before the network's `avgpool` "
            f"layer, and backbone.name={name} has none (resnet, vgg, efficientnet, convnext, "
            "regnet and swin networks have one); use backbone.flatten=true"
        )
    return create_feature_extractor(model, {nodes[nodes.index("avgpool") - 1]: "maps"})


def load_weights(network: nn.Module, path: str, name: str, known_keys: set[str]) -> None:
    """Loads a state_dict file: torchvision's for the whole network (the keys of the removed
    head are ignored) or a TorchvisionBackbone's (keys start with `model.`)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"backbone.weights={path} is not a file; it must be the path of a saved "
                        "state_dict (weights are never downloaded at run time)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever a corrupt or foreign file makes torch.load raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"backbone.weights={path} cannot be read as a state_dict: "
                        f"{first_line}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"backbone.weights={path} holds a {type(state).__name__}, not a "
                        "state_dict (a dict of tensors, as module.state_dict() returns)")
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    expected = network.state_dict()
    # BatchNorm fills in a missing batch counter itself (files saved by older torch lack it)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and k not in known_keys]
    misshapen = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    fit = f"backbone.weights={path} does not fit backbone.name={name}"
    if missing:
        raise UserError(f"{fit}: it lacks {missing[0]!r} ({len(missing)} keys missing)")
    if unexpected:
        raise UserError(f"{fit}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    if misshapen:
        key = misshapen[0]
        raise UserError(f"{fit}: {key!r} has shape {tuple(state[key].shape)}, the network's "
                        f"{tuple(expected[key].shape)}")
    network.load_state_dict({key: state[key] for key in expected if key in state})


class TorchvisionBackbone(nn.Module):
    """Any torchvision classification network (`torchvision.models.list_models`) as a backbone.

    The network is built with weights=None, so nothing is downloaded; `weights` is a local
    state_dict file: torchvision's for the whole network (e.g. saved where there is network
    access with `torch.save(resnet18(weights="DEFAULT").state_dict(), path)`) or one saved from a
    TorchvisionBackbone. Its classification layer becomes nn.Identity, and `out_features` is
    measured once on zeros of `input_shape`. Images of one channel (Omniglot) are repeated to the
    three channels the network takes.

    Args:
        name: a torchvision builder name, e.g. "resnet18".
        weights: path of a state_dict file, or None for a randomly initialised network.
        flatten: False returns the feature maps [C, H, W] that enter the network's global average
            pooling (Relation Networks need them); only networks with an `avgpool` layer have them.
    """

    def __init__(self, input_shape: tuple[int, ...], name: str, weights: str | None = None,
                 flatten: bool = True):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            raise UserError(f"backbone=torchvision takes images [C, H, W] of 1 or 3 channels; "
                            f"this dataset's inputs have shape {tuple(input_shape)}")
        names = classification_models()
        if name not in names:
            close = difflib.get_close_matches(str(name).lower(), names, n=4, cutoff=0.5)
            raise UserError(
                f"backbone.name={name} is not a torchvision classification network "
                f"(close names: {', '.join(close) or 'none'}); "
                "torchvision.models.list_models(module=torchvision.models) lists them all"
            )
        model = torchvision.models.get_model(name, weights=None)
        known_keys = set(model.state_dict())
        remove_auxiliary_heads(model)
        if flatten:
            remove_classifier(model, name)
        else:
            model = feature_map_extractor(model, name)
        if weights is not None:
            load_weights(model, weights, name, known_keys)
        self.model, self.flatten, self.in_channels = model, flatten, input_shape[0]
        try:
            with torch.no_grad():
                output = self.eval()(torch.zeros(1, *input_shape))
        except Exception as error:  # an input too small to pool, or not the size a ViT takes
            raise UserError(f"backbone.name={name} cannot take this dataset's inputs of shape "
                            f"{tuple(input_shape)}: {str(error).strip().splitlines()[0]}") from None
        finally:
            self.train()
        self.out_shape = tuple(output.shape[1:])
        self.out_features = math.prod(self.out_shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        features = self.model(x)
        if not self.flatten:
            return features["maps"]
        return features.flatten(1)
