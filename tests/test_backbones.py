"""The natural-image backbones: ResNet-12 (with DropBlock) and torchvision networks by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from metalearn.algorithms.protonet import ProtoNet
from metalearn.models.backbones import Conv4
from metalearn.models.resnet12 import DropBlock, ResNet12
from metalearn.models.torchvision_net import TorchvisionBackbone
from metalearn.run.build import build
from tests.conftest import make_config
from tests.helpers import user_error

#: parameters of resnet12() in MetaOptNet's models/ResNet12_embedding.py (kjunelee/MetaOptNet
#: at 19601591) and in RFS's models/resnet.py (WangYueFt/rfs at f8c837ba), counted with
#: torch: both 12,424,320, the "12.4M" quoted for ResNet-12 in few-shot papers
REFERENCE_PARAMETERS = 12_424_320

# small inputs: a second OpenMP thread only waits on the first (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")



# ResNet-12

@pytest.mark.parametrize(("size", "maps"), [(84, 5), (32, 2)])
def test_resnet12_output_shapes(size, maps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    pooled = ResNet12((3, size, size)).eval()
    assert pooled.out_features == 640
    with torch.no_grad():
        assert pooled(x).shape == (2, 640)
    spatial = ResNet12((3, size, size), flatten=False).eval()
    assert spatial.out_shape == (640, maps, maps) and not spatial.flatten
    with torch.no_grad():
        assert spatial(x).shape == (2, 640, maps, maps)


def test_resnet12_has_the_published_parameter_count():
    count = sum(p.numel() for p in ResNet12((3, 84, 84)).parameters())
    assert abs(count - 12.4e6) / 12.4e6 < 0.01
    assert count == REFERENCE_PARAMETERS  # the same layers as the references


def test_resnet12_takes_one_channel_28px_images():
    net = ResNet12((1, 28, 28), channels=(8, 8, 8, 8))
    assert net.out_shape == (8, 1, 1) and net.out_features == 8
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 8)


def test_gradients_reach_every_resnet12_parameter():
    torch.manual_seed(0)
    net = ResNet12((3, 32, 32), channels=(8, 8, 16, 16), drop_block=True, drop_block_size=2)
    output = net(torch.randn(4, 3, 32, 32))
    (output * torch.randn_like(output)).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_dropblock_drops_whole_squares_in_training():
    size = 3
    drop = DropBlock(drop_rate=0.3, block_size=size).train()
    torch.manual_seed(0)
    x = torch.ones(4, 8, 12, 12)
    dropped = (drop(x) == 0).float()
    assert 0 < dropped.mean() < 1
    # a union of size x size squares inside the map is unchanged by a morphological opening:
    # the positions whose square (from there, down and right) is all dropped, grown back
    whole_squares = -F.max_pool2d(-dropped, size, stride=1)
    assert torch.equal(F.max_pool2d(F.pad(whole_squares, [size - 1] * 4), size, stride=1), dropped)
    # what is kept is rescaled so that the mean activation stays 1
    kept = drop(x)
    assert torch.allclose(kept[kept > 0], torch.tensor(kept.numel() / (kept > 0).sum().item()))
    # the mask comes from torch's RNG
    torch.manual_seed(1)
    first = drop(x)
    torch.manual_seed(1)
    assert torch.equal(drop(x), first)


def test_dropblock_is_the_identity_in_eval_mode():
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(DropBlock(drop_rate=0.5, block_size=2).eval()(x), x)
    net = ResNet12((3, 32, 32), channels=(4, 4, 4, 4), drop_block=True, drop_rate=0.5,
                   drop_block_size=1).eval()
    image = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(image), net(image))


@pytest.mark.parametrize(("settings", "key"), [
    ({"channels": ()}, "backbone.channels=[]"),
    ({"channels": (8, 0)}, "backbone.channels=[8, 0]"),
    ({"channels": (8,) * 5}, "backbone.channels=[8, 8, 8, 8, 8]"),  # 5 halvings of 28 px
    ({"drop_rate": 1.0}, "backbone.drop_rate=1.0"),
    ({"drop_block_size": 0}, "backbone.drop_block_size=0"),
])
def test_resnet12_settings_errors(settings, key):
    assert user_error(lambda: ResNet12((1, 28, 28), **settings)).startswith(key)


# torchvision networks

def test_torchvision_resnet18_returns_512_features():
    net = TorchvisionBackbone((3, 84, 84), name="resnet18")
    assert net.out_features == 512 and isinstance(net.model.fc, torch.nn.Identity)
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 512)


def test_torchvision_takes_one_channel_images():
    net = TorchvisionBackbone((1, 28, 28), name="resnet18")
    assert net.out_features == 512
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 512)


def test_torchvision_feature_maps():
    net = TorchvisionBackbone((3, 84, 84), name="resnet18", flatten=False)
    assert net.out_shape == (512, 3, 3) and net.out_features == 512 * 3 * 3
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 512, 3, 3)
    # SqueezeNet pools inside its classifier: it has no maps to give
    message = user_error(lambda: TorchvisionBackbone((3, 84, 84), "squeezenet1_1", flatten=False))
    assert message.startswith("backbone.flatten=false") and "squeezenet1_1" in message


def test_torchvision_weights_round_trip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    saved = TorchvisionBackbone((3, 32, 32), name="resnet18").eval()
    torch.save(saved.state_dict(), tmp_path / "backbone.pt")
    loaded = TorchvisionBackbone((3, 32, 32), name="resnet18",
                                 weights=str(tmp_path / "backbone.pt")).eval()
    other = TorchvisionBackbone((3, 32, 32), name="resnet18").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x)) and not torch.equal(other(x), saved(x))


def test_torchvision_loads_torchvisions_own_state_dict(tmp_path):
    """A whole network's file, classifier included (as torchvision's ImageNet weights are)."""
    network = torchvision.models.resnet18().eval()
    torch.save(network.state_dict(), tmp_path / "resnet18.pth")
    loaded = TorchvisionBackbone((3, 32, 32), "resnet18", str(tmp_path / "resnet18.pth")).eval()
    x = torch.randn(2, 3, 32, 32)
    network.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.equal(loaded(x), network(x))


def test_torchvision_unknown_name():
    message = user_error(lambda: TorchvisionBackbone((3, 84, 84), name="resnet81"))
    assert message.startswith("backbone.name=resnet81 ")
    assert "resnet18" in message and "list_models(" in message


def test_torchvision_missing_weights_file(tmp_path):
    path = str(tmp_path / "absent.pt")
    message = user_error(lambda: TorchvisionBackbone((3, 84, 84), "resnet18", weights=path))
    assert message.startswith(f"backbone.weights={path} ")


def test_torchvision_weights_that_do_not_fit(tmp_path):
    state = TorchvisionBackbone((3, 32, 32), name="resnet18").state_dict()
    path = tmp_path / "weights.pt"
    torch.save({key: value for key, value in state.items() if key != "model.conv1.weight"}, path)
    message = user_error(lambda: TorchvisionBackbone((3, 32, 32), "resnet18", str(path)))
    assert message.startswith(f"backbone.weights={path} ") and "'conv1.weight'" in message
    torch.save({**state, "model.extra.weight": torch.zeros(1)}, path)
    message = user_error(lambda: TorchvisionBackbone((3, 32, 32), "resnet18", str(path)))
    assert message.startswith(f"backbone.weights={path} ") and "'extra.weight'" in message


# the configs

@pytest.mark.parametrize(("overrides", "backbone_class", "features"), [
    (["backbone=resnet12", "backbone.channels=[8,8,8,8]"], ResNet12, 8),
    (["backbone=torchvision", "backbone.name=resnet18"], TorchvisionBackbone, 512),
])
def test_backbone_config_builds_with_an_algorithm(overrides, backbone_class, features, tmp_path):
    datamodule, model = build(make_config(overrides, tmp_path))  # Omniglot: 1 x 28 x 28
    assert isinstance(model, ProtoNet) and isinstance(model.backbone, backbone_class)
    assert model.backbone.out_features == features
    batch = datamodule.val_dataloader().dataset[0]
    with torch.no_grad():
        predictions = model.eval().adapt_and_predict(*batch.task(0)[:3])
    assert predictions.shape[0] == batch.query_x.shape[1]


def test_conv4_on_84_pixel_rgb_images_gives_the_papers_1600_features():
    backbone = Conv4((3, 84, 84))
    assert backbone.out_features == 1600 and backbone.out_shape == (64, 5, 5)
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 84, 84)).shape == (2, 1600)
