"""The metric family: Prototypical, Matching, Relation and Siamese networks behind one shape
(process_support_set, then forward), each checked on its mechanism and by learning real Omniglot."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.matchingnet import MatchingNet
from metalearn.algorithms.protonet import ProtoNet
from metalearn.algorithms.relationnet import RelationNet
from metalearn.algorithms.siamese import SiameseNet, balanced_pairs
from metalearn.build import build
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError
from metalearn.models.backbones import Conv4
from metalearn.training import train
from tests import budgets
from tests.conftest import make_config, mean_query_accuracy
from tests.helpers import images


def metric_model(name: str, **kwargs):
    torch.manual_seed(0)
    if name == "relationnet":
        model = RelationNet(Conv4((1, 28, 28), flatten=False, pooled_blocks=2), **kwargs)
    else:
        model = {"protonet": ProtoNet, "matchingnet": MatchingNet,
                 "siamese": SiameseNet}[name](Conv4((1, 28, 28)), **kwargs)
    return model.eval()


# The shared shape ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("protonet", {}), ("protonet", {"distance": "cosine", "embedding_dim": 16}),
    ("matchingnet", {}), ("relationnet", {}), ("siamese", {}),
])
def test_scores_come_from_the_support_set_whatever_its_order(name, kwargs):
    model = metric_model(name, **kwargs)
    support_x, support_y, query_x = images(10), torch.arange(5).repeat(2), images(7, seed=1)
    with torch.no_grad():
        model.process_support_set(support_x, support_y)
        scores = model(query_x)
        order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
        model.process_support_set(support_x[order], support_y[order])
        shuffled = model(query_x)
        # relabelling the classes permutes the score columns the same way
        relabel = torch.tensor([2, 0, 4, 1, 3])
        model.process_support_set(support_x, relabel[support_y])
        relabelled = model(query_x)
    assert scores.shape == (7, 5)
    assert torch.allclose(scores, shuffled, atol=1e-5)
    assert torch.allclose(relabelled[:, relabel], scores, atol=1e-5)
    assert torch.allclose(model.adapt_and_predict(support_x, support_y, query_x), scores, atol=1e-5)


# Matching Networks -----------------------------------------------------------------------------
def test_matching_attention_is_a_distribution_that_favours_the_identical_image():
    model = metric_model("matchingnet")
    support_x = images(5)
    with torch.no_grad():
        model.process_support_set(support_x, torch.arange(5))
        attention = model.attention(model.embed(support_x[[3, 0, 4]]))
        log_probabilities = model(support_x[[3, 0, 4]])
    assert torch.allclose(attention.sum(1), torch.ones(3))
    assert (attention > 0).all()
    assert attention.argmax(1).tolist() == [3, 0, 4]
    # the class scores are the attention summed per class, as log-probabilities
    assert torch.allclose(log_probabilities.exp(), attention, atol=1e-6)


def test_matching_sums_attention_over_each_class_support():
    model = metric_model("matchingnet", cosine_scale=1.0)
    model.process_support_features(torch.eye(4), torch.tensor([0, 1, 1, 0]))
    query = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # cosines with the four supports: 1, 0, 0, 0; class 0 holds supports 0 and 3
    expected = torch.tensor([[math.e + 1, 2.0]]) / (math.e + 3)
    assert torch.allclose(model.score_queries(query).exp(), expected)


def test_full_context_embeddings_read_the_whole_support_set():
    model = metric_model("matchingnet", fce=True, processing_steps=3)
    features = torch.randn(15, 64, generator=torch.Generator().manual_seed(0))  # 5-way 3-shot
    labels = torch.arange(5).repeat(3)
    queries = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.process_support_features(features, labels)
        context = model.support_features
        scores = model.score_queries(queries)
        query_embedding = model.query_attention(queries, context)
        # change one support example: every other support embedding moves too (the BiLSTM)
        changed = features.clone()
        changed[7] += 1.0
        model.process_support_features(changed, labels)
        moved = model.support_features
        rescored = model.score_queries(queries)
    assert context.shape == features.shape
    assert not torch.allclose(context, features, atol=1e-3)
    assert not torch.allclose(query_embedding, queries, atol=1e-3)
    others = [i for i in range(15) if i != 7]
    assert ((moved[others] - context[others]).abs().amax(1) > 1e-4).all()
    assert not torch.allclose(scores, rescored)
    assert torch.allclose(scores.exp().sum(1), torch.ones(4))


# Relation Networks -----------------------------------------------------------------------------
def test_relation_scores_lie_in_0_1_and_the_class_feature_is_the_sum_of_its_supports():
    model = metric_model("relationnet")
    support_x, support_y = images(15), torch.arange(5).repeat(3)  # 5-way 3-shot
    with torch.no_grad():
        model.process_support_set(support_x, support_y)
        maps = model.embed(support_x)
        scores = model(images(10, seed=1))
    assert maps.shape == (15, 64, 7, 7)  # the paper's 64 maps of 7x7 on Omniglot
    for label in range(5):
        assert torch.allclose(model.class_features[label], maps[support_y == label].sum(0),
                              atol=1e-5)
    assert scores.shape == (10, 5)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_class_feature_sums_by_hand():
    model = metric_model("relationnet")
    features = torch.arange(12.0).view(3, 1, 2, 2)
    model.process_support_features(features, torch.tensor([1, 0, 1]))
    assert torch.equal(model.class_features[0], features[1])
    assert torch.equal(model.class_features[1], features[0] + features[2])


def test_relation_loss_is_the_squared_error_to_one_hot_targets():
    model = metric_model("relationnet")
    scores = torch.tensor([[0.9, 0.2], [0.4, 0.3]])
    expected = ((0.9 - 1) ** 2 + 0.2**2 + 0.4**2 + (0.3 - 1) ** 2) / 4
    assert model.task_loss(scores, torch.tensor([0, 1])).item() == pytest.approx(expected)


@pytest.mark.parametrize("overrides,message", [
    (["backbone.flatten=true"], "needs a backbone that returns feature maps"),
    (["backbone.pooled_blocks=4"], "1x1, but the relation module pools them twice"),
    (["backbone.pooled_blocks=5"], "backbone.pooled_blocks=5 must be between 0 and"),
])
def test_relationnet_rejects_a_backbone_without_usable_feature_maps(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        build(make_config(["algorithm=relationnet", *overrides], tmp_path))


# Siamese Networks ------------------------------------------------------------------------------
def test_pairs_of_a_task_are_balanced_and_labelled_by_class():
    support_y = torch.tensor([2, 0, 1, 1, 0, 2])  # 3-way 2-shot
    query_y = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    queries, supports, same = balanced_pairs(support_y, query_y)
    assert same.sum().item() == len(query_y) == (~same).sum().item()
    assert torch.equal(support_y[supports] == query_y[queries], same)
    # every query appears once as a same pair and once as a different pair
    assert torch.equal(queries[same].sort().values, torch.arange(7))
    assert torch.equal(queries[~same].sort().values, torch.arange(7))
    # both shots of a class are used
    assert set(supports[same & (query_y[queries] == 0)].tolist()) == {1, 4}


def image_hashes(images_by_class: torch.Tensor) -> set[bytes]:
    return {hashlib.sha1(image.numpy().tobytes()).digest()
            for image in images_by_class.flatten(0, 1)}


def test_siamese_pairs_come_balanced_from_meta_train_classes_only(tmp_path):
    datamodule, _ = build(make_config(["algorithm=siamese", "dataset.split=lake",
                                       "dataset.rotations=false"], tmp_path))
    by_split = datamodule.tasks.images_by_split
    train_images = image_hashes(by_split["train"])
    held_out = image_hashes(by_split["val"]) | image_hashes(by_split["test"])
    total_same = total = 0
    for step, batch in zip(range(3), datamodule.train_dataloader()):
        task = batch.task(0)
        queries, supports, same = balanced_pairs(task.support_y, task.query_y)
        assert task.support_y.unique().numel() == 20  # the config's 20-way training tasks
        total_same, total = total_same + same.sum().item(), total + len(same)
        for image in torch.cat([task.query_x[queries], task.support_x[supports]]):
            digest = hashlib.sha1((image * 255).round().to(torch.uint8).numpy().tobytes()).digest()
            assert digest in train_images and digest not in held_out
    assert total_same * 2 == total


def test_siamese_similarity_is_a_learned_weighted_l1_distance():
    model = metric_model("siamese")
    with torch.no_grad():
        model.distance_weights.weight.copy_(torch.linspace(-1, 1, 64).view(1, 64))
        model.distance_weights.bias.fill_(0.5)
    support, query = torch.rand(3, 64), torch.rand(2, 64)
    model.process_support_features(support, torch.tensor([0, 1, 1]))
    logits = model.same_class_logits(query)
    by_hand = (query[:, None] - support[None]).abs() @ torch.linspace(-1, 1, 64) + 0.5
    assert torch.allclose(logits, by_hand, atol=1e-5)
    # K-shot: a class scores the mean of its supports' probabilities
    scores = model.score_queries(query)
    assert torch.allclose(scores[:, 1], torch.sigmoid(by_hand[:, 1:]).mean(1), atol=1e-6)


def test_siamese_trains_on_binary_cross_entropy_of_its_pairs():
    model = metric_model("siamese").train()
    support_y = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    batch = TaskBatch(images(5).unsqueeze(0), support_y.unsqueeze(0),
                    images(10, seed=1).unsqueeze(0), torch.arange(5).repeat(2).unsqueeze(0))
    loss, predictions = model.meta_train_loss(batch)
    task = batch.task(0)
    features = model.embed(torch.cat([task.support_x, task.query_x]))
    model.process_support_features(features[:5], task.support_y)
    logits = model.same_class_logits(features[5:])
    queries, supports, same = balanced_pairs(task.support_y, task.query_y)
    expected = F.binary_cross_entropy_with_logits(logits[queries, supports], same.float())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert predictions.shape == (1, 10, 5)


# Learning real Omniglot ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algorithm,threshold", [
    ("matchingnet", 0.80), ("relationnet", 0.80), ("siamese", 0.70),
])
def test_learns_omniglot_5way_1shot(tmp_path, algorithm, threshold):
    cfg = make_config(budgets.METRIC[algorithm], tmp_path)
    record = train(cfg)
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == (algorithm, 5, 1)
    assert record["test_acc"] >= threshold, record  # chance is 0.20
    if algorithm == "siamese":
        assert record["test_pair_acc"] >= 0.75, record  # chance is 0.50
    # a random embedding already beats chance; meta-training must beat it clearly
    torch.manual_seed(12345)
    datamodule, random_init = build(cfg)
    with torch.no_grad():
        random_acc = mean_query_accuracy(random_init, datamodule.test_dataloader())
    assert record["test_acc"] >= random_acc + 0.10, (record["test_acc"], random_acc)
