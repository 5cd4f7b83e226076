"""The text encoders (metalearn/models/text_encoders.py, pretrained_text.py): each against an
independent computation on the same weights, under MAML's batched inner loop, with padding,
frozen and fine-tuned; the pretrained ones against their packages' own numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, vmap

from metalearn.algorithms.functional import TaskBatchedLoop, sgd
from metalearn.data.tokenizers import WordVocabulary, tokenizer_from_state
from metalearn.models.text_encoders import (
    BagOfEmbeddings,
    TextCNN,
    TextEncoder,
    TextTransformer,
)
from metalearn.paths import project_root
from tests.helpers import user_error

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the dog runs after the cat", "a cat sleeps", "birds fly", "the old dog sleeps all day"]
VOCABULARY = WordVocabulary.fit(TEXTS)
MAX_LENGTH = 8
SMALL = {  # widths small enough for fast tests
    BagOfEmbeddings: {"embedding_dim": 12},
    TextCNN: {"embedding_dim": 12, "num_filters": 5},
    TextTransformer: {"embedding_dim": 12, "num_heads": 3, "feedforward_dim": 16},
}
ENCODERS = list(SMALL)


def token_rows(texts: list[str], length: int | None = None) -> torch.Tensor:
    """The texts' ids, zero-padded on the right to the longest (or `length`)."""
    ids = VOCABULARY.encode(texts)
    length = length or max(len(row) for row in ids)
    return torch.tensor([row + [0] * (length - len(row)) for row in ids])


def encoder(kind, **settings) -> TextEncoder:
    torch.manual_seed(0)
    return kind((MAX_LENGTH,), VOCABULARY, **{**SMALL[kind], **settings})


def test_bag_of_embeddings_is_the_mean_of_the_words_embeddings():
    model = encoder(BagOfEmbeddings)
    x = token_rows(TEXTS)
    table = model.embedding.weight.detach()
    expected = torch.stack([torch.stack([table[i] for i in row if i != 0]).mean(0) for row in x])
    # then normalised over the features (a fresh LayerNorm: scale 1, shift 0)
    torch.testing.assert_close(model(x), torch.nn.functional.layer_norm(expected, (12,)))
    torch.testing.assert_close(encoder(BagOfEmbeddings, output_norm=False)(x), expected)
    assert model(x).shape == (len(TEXTS), model.out_features)


def kim_features(model: TextCNN, ids: list[int]) -> torch.Tensor:
    """Kim's features computed window by window: every window of `width` words that holds at
    least one of the text's words (zeros beyond the text), each filter's ReLU, the maximum."""
    table = model.embedding.weight.detach()
    features = []
    for width, convolution in zip(model.filter_widths, model.convolutions):
        zeros = [torch.zeros(table.shape[1])] * (width - 1)
        words = zeros + [table[i] for i in ids] + zeros
        windows = [torch.stack(words[start:start + width], dim=1)  # [d, width]
                   for start in range(len(ids) + width - 1)]
        for weight, bias in zip(convolution.weight.detach(), convolution.bias.detach()):
            features.append(max(torch.relu((weight * window).sum() + bias) for window in windows))
    return torch.stack(features)


def test_text_cnn_equals_kim_window_by_window_even_for_texts_shorter_than_a_filter():
    model = encoder(TextCNN).eval()
    texts = [*TEXTS, "dog", "a cat"]  # one and two words, below the widest filter (5)
    x = token_rows(texts)
    expected = torch.stack([kim_features(model, [i for i in row.tolist() if i != 0])
                            for row in x])
    expected = torch.nn.functional.layer_norm(expected, (15,))  # a fresh LayerNorm
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (len(texts), 3 * 5) and model.out_features == 15
    # a batch of short texts only: L = 2, below every filter width
    torch.testing.assert_close(model(token_rows(["dog", "a cat"])), expected[-2:])


def torch_reference(model: TextTransformer) -> nn.TransformerEncoder:
    """torch's own pre-LN transformer layers with the model's weights."""
    dim = model.out_features
    layer = nn.TransformerEncoderLayer(
        dim, model.layers[0].num_heads, model.layers[0].feedforward[0].out_features, dropout=0.0,
        activation="gelu", batch_first=True, norm_first=True)
    reference = nn.TransformerEncoder(layer, len(model.layers), enable_nested_tensor=False)
    for ours, theirs in zip(model.layers, reference.layers):
        theirs.self_attn.in_proj_weight.data.copy_(ours.query_key_value.weight)
        theirs.self_attn.in_proj_bias.data.copy_(ours.query_key_value.bias)
        theirs.self_attn.out_proj.load_state_dict(ours.attention_out.state_dict())
        theirs.linear1.load_state_dict(ours.feedforward[0].state_dict())
        theirs.linear2.load_state_dict(ours.feedforward[3].state_dict())
        theirs.norm1.load_state_dict(ours.attention_norm.state_dict())
        theirs.norm2.load_state_dict(ours.feedforward_norm.state_dict())
    return reference.eval()


def test_transformer_equals_torchs_layers_on_the_texts_tokens():
    model = encoder(TextTransformer, num_layers=2).eval()
    reference = torch_reference(model)
    x = token_rows(TEXTS)
    expected = []
    with torch.no_grad():
        for row in x:
            ids = row[row != 0]  # the text alone, no padding to mask
            states = model.embedding(ids[None]) + model.positions[:len(ids)]
            expected.append(model.norm(reference(states))[0].mean(0))
        torch.testing.assert_close(model(x), torch.stack(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ENCODERS)
def test_padding_changes_no_features_and_an_empty_text_gives_finite_ones(kind):
    model = encoder(kind).eval()
    x = token_rows(TEXTS)
    with torch.no_grad():
        padded = model(token_rows(TEXTS, MAX_LENGTH))
        torch.testing.assert_close(padded, model(x), atol=1e-6, rtol=1e-6)
        empty = model(torch.cat([x, torch.zeros(1, x.shape[1], dtype=torch.long)]))
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty[:-1], model(x), atol=1e-6, rtol=1e-6)


def stacked(model: nn.Module, tasks: int) -> dict[str, torch.Tensor]:
    """One copy of each weight per task, each slightly different."""
    generator = torch.Generator().manual_seed(1)
    return {name: torch.stack([w.detach() + 0.01 * torch.randn(w.shape, generator=generator)
                               for _ in range(tasks)])
            for name, w in model.named_parameters()}


@pytest.mark.parametrize("kind", ENCODERS)
def test_functional_call_under_vmap_equals_a_loop_over_tasks(kind):
    model = encoder(kind).eval()
    weights = stacked(model, tasks=3)
    x = torch.stack([token_rows(TEXTS), token_rows(TEXTS[::-1]), token_rows(TEXTS[1:] + ["dog"])])
    batched = vmap(lambda w, xs: functional_call(model, w, (xs,)))(weights, x)
    looped = torch.stack([functional_call(model, {n: w[t] for n, w in weights.items()}, (x[t],))
                          for t in range(3)])
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ENCODERS)
def test_maml_inner_loop_batches_the_encoder_over_tasks(kind):
    """The batched backend's second-order inner step runs under vmap (no fallback to a loop)
    and adapts each task's weights as the task-by-task run does."""
    torch.set_default_dtype(torch.float64)
    try:
        body = encoder(kind)
        network = nn.Sequential(body, nn.Linear(body.out_features, 2))
    finally:
        torch.set_default_dtype(torch.float32)
    support_x = torch.stack([token_rows(TEXTS), token_rows(TEXTS[::-1])])
    support_y = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    rates = {name: 0.1 for name, _ in network.named_parameters()}
    meta_gradients = []
    for batched in (True, False):
        loop = TaskBatchedLoop(network, nn.functional.cross_entropy)
        loop.batched = batched
        adapted = loop.adapt(support_x, support_y, steps=2, rule=lambda: sgd(rates),
                             first_order=False, training=True).weights
        assert loop.batched == batched  # vmap did not give up on the network
        outputs, _ = loop.predict(adapted, support_x, training=True, batched=batched)
        loss = nn.functional.cross_entropy(outputs.flatten(0, 1), support_y.flatten())
        meta_gradients.append(torch.autograd.grad(loss, list(network.parameters())))
    for batched, looped in zip(*meta_gradients):
        torch.testing.assert_close(batched, looped)
        assert batched.abs().sum() > 0


@pytest.mark.parametrize("kind", ENCODERS)
def test_frozen_embeddings_get_no_gradient_and_fine_tuned_ones_do(kind):
    x = token_rows(TEXTS)
    frozen = encoder(kind, freeze_embeddings=True)
    assert "embedding.weight" not in dict(frozen.named_parameters())
    assert "embedding.weight" in frozen.state_dict()  # random rows are saved with the model
    head = nn.Linear(frozen.out_features, 1)
    head(frozen(x)).sum().backward()
    assert not frozen.embedding.weight.requires_grad and frozen.embedding.weight.grad is None
    assert all(p.grad is not None for p in frozen.parameters())

    tuned = encoder(kind)
    # through a head: a LayerNorm's outputs sum to a constant, whatever its input
    nn.Linear(tuned.out_features, 1)(tuned(x)).sum().backward()
    gradient = tuned.embedding.weight.grad
    used = torch.unique(x[x != 0])
    assert gradient[used].abs().sum(1).gt(0).all()
    assert gradient[0].eq(0).all()  # padding stays zero


def test_each_config_builds_its_encoder_with_its_documented_width():
    backbones = Path(project_root()) / "configs" / "backbone"
    expected = {"bag_of_embeddings": 128, "text_cnn": 300, "text_transformer": 128}
    for name, width in expected.items():
        model = instantiate(OmegaConf.load(backbones / f"{name}.yaml"), input_shape=(MAX_LENGTH,),
                            tokenizer=VOCABULARY)
        assert model.out_features == width
        assert model(token_rows(TEXTS)).shape == (len(TEXTS), width)
        assert type(model).own_tokenizer({}) is None


def test_bad_settings_are_one_line_errors():
    assert "backbone.num_heads=5 must divide backbone.embedding_dim=12" in user_error(
        lambda: encoder(TextTransformer, num_heads=5))
    assert "backbone.filter_widths=[3, 0]" in user_error(
        lambda: encoder(TextCNN, filter_widths=[3, 0]))
    assert "backbone.dropout=1.5" in user_error(lambda: encoder(TextCNN, dropout=1.5))


# WordLlama ---------------------------------------------------------------------------------------

needs_wordllama = pytest.mark.skipif(importlib.util.find_spec("wordllama") is None,
                                     reason="the wordllama package is not installed")


@needs_wordllama
def test_wordllama_embeds_a_text_as_the_mean_of_its_tokens_rows():
    from safetensors import safe_open
    from tokenizers import Tokenizer as Backend

    from metalearn.data.tokenizers import WordLlamaTokenizer
    from metalearn.models.pretrained_text import WordLlamaEncoder

    folder = Path(importlib.util.find_spec("wordllama").submodule_search_locations[0])
    sentence = "A small dog barks at the postman."
    ids = Backend.from_file(str(folder / "tokenizers/l2_supercat_tokenizer_config.json")).encode(
        sentence, add_special_tokens=False).ids
    with safe_open(folder / "weights/l2_supercat_256.safetensors", "pt") as weights:
        expected = weights.get_tensor("embedding.weight")[ids].float().mean(0)

    tokenizer = WordLlamaEncoder.own_tokenizer({"freeze": True})
    assert isinstance(tokenizer, WordLlamaTokenizer) and tokenizer.vocab_size == 32001
    encoded = tokenizer.encode([sentence, ""])
    assert encoded[0] == [i + 1 for i in ids] and encoded[1] == []
    assert tokenizer_from_state(tokenizer.state()).encode([sentence]) == encoded[:1]
    model = WordLlamaEncoder((16,), tokenizer)
    x = torch.zeros(2, 16, dtype=torch.long)
    x[0, :len(ids)] = torch.tensor(encoded[0])
    features = model(x)
    assert model.out_features == 256
    torch.testing.assert_close(features[0], expected)
    assert features[1].eq(0).all()  # an empty text


@needs_wordllama
def test_wordllama_frozen_is_left_out_of_checkpoints_and_fine_tuned_learns():
    from metalearn.data.tokenizers import WordLlamaTokenizer
    from metalearn.models.pretrained_text import WordLlamaEncoder

    tokenizer = WordLlamaTokenizer()
    frozen = WordLlamaEncoder((8,), tokenizer)
    assert not list(frozen.parameters()) and "embedding.weight" not in frozen.state_dict()
    tuned = WordLlamaEncoder((8,), tokenizer, freeze=False)
    x = torch.tensor([tokenizer.encode(["red fox"])[0] + [0] * 3])
    tuned(x).sum().backward()
    assert tuned.embedding.weight.grad[x[0, 0]].abs().sum() > 0
    assert "embedding.weight" in tuned.state_dict()


def test_wordllama_not_installed_says_how_to_install_it(monkeypatch):
    from metalearn.models import pretrained_text

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wordllama" else find_spec(name, *args))
    message = user_error(pretrained_text.WordLlamaTokenizer)
    assert "pip install --no-deps wordllama==0.4.0.post1" in message


def test_wordllama_refuses_ids_of_another_tokenizer():
    from metalearn.models.pretrained_text import WordLlamaEncoder

    assert "backbone=wordllama" in user_error(lambda: WordLlamaEncoder((8,), VOCABULARY))


# A local Hugging Face model directory ------------------------------------------------------------

@pytest.fixture
def bert_folder(tmp_path) -> Path:
    """A tiny random BERT and its tokenizer, saved as a model directory."""
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(" ".join(TEXTS).split()))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=20)
    transformers.BertModel(config).save_pretrained(tmp_path)
    return tmp_path


def test_pretrained_directory_equals_the_models_own_mean_pooling(bert_folder):
    from transformers import AutoModel, AutoTokenizer

    from metalearn.data.tokenizers import PretrainedTokenizer
    from metalearn.models.pretrained_text import PretrainedTextEncoder

    texts = [*TEXTS, "dog", ""]
    own_tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    inputs = own_tokenizer(texts, padding=True, return_tensors="pt")
    own_model = AutoModel.from_pretrained(bert_folder).eval()
    with torch.no_grad():
        states = own_model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    expected = (states * mask).sum(1) / mask.sum(1)

    settings = {"path": str(bert_folder), "freeze": True}
    tokenizer = PretrainedTextEncoder.own_tokenizer(settings)
    assert isinstance(tokenizer, PretrainedTokenizer) and tokenizer.mask_text == "[MASK]"
    assert tokenizer_from_state(tokenizer.state()).encode(texts) == tokenizer.encode(texts)
    ids = tokenizer.encode(texts)
    x = torch.tensor([row + [0] * (MAX_LENGTH - len(row)) for row in ids])
    model = PretrainedTextEncoder((MAX_LENGTH,), tokenizer, **settings).train()
    assert not model.model.training  # frozen: no dropout
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[:, :6]), expected, atol=1e-5, rtol=1e-5)
    assert model.out_features == 16

    tuned = PretrainedTextEncoder((MAX_LENGTH,), tokenizer, path=str(bert_folder), freeze=False)
    assert tuned.train().model.training and all(p.requires_grad for p in tuned.parameters())


def test_pretrained_directory_mistakes_are_one_line_errors(bert_folder, tmp_path):
    from metalearn.data.tokenizers import PretrainedTokenizer
    from metalearn.models.pretrained_text import PretrainedTextEncoder

    missing = tmp_path / "nowhere"
    message = user_error(lambda: PretrainedTokenizer(str(missing)))
    assert f"backbone.path={missing} is not a directory" in message and "--local-dir" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"backbone.path={empty} holds no Hugging Face tokenizer" in user_error(
        lambda: PretrainedTokenizer(str(empty)))
    tokenizer = PretrainedTokenizer(str(bert_folder))
    assert "dataset.max_length=18 or less" in user_error(
        lambda: PretrainedTextEncoder((30,), tokenizer, path=str(bert_folder)))


def test_a_frozen_pretrained_directory_runs_in_mamls_functional_loop(bert_folder):
    """The batched backend runs a copy of the network on the meta device (functional.py):
    switching the frozen model to eval mode there must not reach for devices or hub kernels."""
    from metalearn.models.pretrained_text import PretrainedTextEncoder

    tokenizer = PretrainedTextEncoder.own_tokenizer({"path": str(bert_folder)})
    body = PretrainedTextEncoder((MAX_LENGTH,), tokenizer, path=str(bert_folder))
    network = nn.Sequential(body, nn.Linear(body.out_features, 2))
    ids = tokenizer.encode(TEXTS)
    x = torch.tensor([row + [0] * (MAX_LENGTH - len(row)) for row in ids])
    support_x, support_y = torch.stack([x, x.flip(0)]), torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    loop = TaskBatchedLoop(network, nn.functional.cross_entropy)
    head = {"1.weight", "1.bias"}
    adapted = loop.adapt(support_x, support_y, steps=1, rule=lambda: sgd(dict.fromkeys(head, 0.1)),
                         first_order=True, training=True, adapted_names=head).weights
    outputs, _ = loop.predict(adapted, support_x, training=True)
    assert outputs.shape == (2, 4, 2) and torch.isfinite(outputs).all()
    assert loop.network.structure[0].model.training is False  # frozen: no dropout
