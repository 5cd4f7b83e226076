"""Texts through the whole run: the builder's choice of tokenizer, the backbones that read texts
(and refuse other data), every algorithm training its text encoder, checkpoints that keep the
vocabulary for evaluation on other texts, and learning on WordNet definitions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError
from metalearn.evaluation.protocol import score_episodes
from metalearn.models.text_encoders import WordEmbedding
from metalearn.run.build import build, instantiate_dataset
from metalearn.run.config_check import TEXT_ENCODERS
from metalearn.run.evaluate import evaluate
from metalearn.run.stored_runs import stored_run
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config
from tests.helpers import digits_frame, topic_table

#: where dataset=wordnet reads the database (configs/dataset/wordnet.yaml)
WORDNET = Path(os.environ.get("METALEARN_WORDNET",
                              Path(__file__).resolve().parents[2] / "shared/datasets/wordnet"))
ALGORITHMS = ("protonet", "matchingnet", "relationnet", "siamese", "maml", "fomaml", "anil",
              "reptile", "metasgd", "meta_lstm", "metanet", "mann", "ntm", "baseline",
              "baseline_pp", "rfs")
#: a few cheap steps of any algorithm on the topic table
SMALL = ["num_epochs=1", "episode.num_tasks=8", "episode.meta_batch_size=2",
         "episode.val_episodes=4", "episode.test_episodes=8", "episode.query_size=3",
         "episode.n_way=3", "episode.train_n_way=null", "episode.train_query_size=null"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return topic_table(tmp_path_factory.mktemp("texts") / "topics.csv")


def text_config(table: Path, tmp_path: Path, *overrides: str):
    return make_config(["dataset=text", f"dataset.path={table}",
                        f"paths.data_dir={tmp_path}/data", *overrides], tmp_path / "run")


def test_texts_of_different_lengths_concatenate_right_padded():
    """Each sampled batch is trimmed to its longest text; evaluation concatenates episodes."""
    short = TaskBatch(torch.tensor([[[3, 4]]]), torch.zeros(1, 1, dtype=torch.long),
                      torch.tensor([[[5, 0]]]), torch.zeros(1, 1, dtype=torch.long))
    long = TaskBatch(torch.tensor([[[6, 7, 8]]]), torch.zeros(1, 1, dtype=torch.long),
                     torch.tensor([[[9, 9, 9]]]), torch.zeros(1, 1, dtype=torch.long))
    joined = TaskBatch.concat([short, long])
    assert torch.equal(joined.support_x, torch.tensor([[[3, 4, 0]], [[6, 7, 8]]]))
    assert torch.equal(joined.query_x, torch.tensor([[[5, 0, 0]], [[9, 9, 9]]]))


def test_a_backbone_that_does_not_read_texts_refuses_them(table, tmp_path):
    with pytest.raises(UserError) as caught:
        build(text_config(table, tmp_path, "backbone=conv4"))
    assert str(caught.value) == (
        "dataset=text gives texts (token ids), which the backbone Conv4 does not read; use a "
        f"text encoder: backbone={' | '.join(TEXT_ENCODERS)}")


def test_a_text_encoder_refuses_data_that_is_not_text(tmp_path):
    digits_frame().to_csv(tmp_path / "digits.csv", index=False)
    with pytest.raises(UserError) as caught:
        build(make_config(["dataset=features", f"dataset.path={tmp_path}/digits.csv",
                           "backbone=text_cnn"], tmp_path / "run"))
    assert str(caught.value).startswith("the backbone TextCNN reads texts, and dataset=features "
                                        "gives inputs of shape (64,)")


def test_a_pretrained_encoder_encodes_the_texts_with_its_own_tokenizer(table, tmp_path):
    from metalearn.data.text import text_table
    from metalearn.data.tokenizers import WordLlamaTokenizer

    datamodule, model = build(text_config(table, tmp_path, "backbone=wordllama"))
    assert datamodule.tasks.tokenizer.kind == "wordllama"
    assert model.backbone.out_features == 256
    by_hand = text_table(str(table), tokenizer=WordLlamaTokenizer())
    by_words = text_table(str(table))
    for split in ("train", "test"):
        assert torch.equal(datamodule.tasks.splits[split].examples, by_hand.splits[split].examples)
    assert not torch.equal(by_words.splits["train"].examples, by_hand.splits["train"].examples)


def word_embeddings(model) -> torch.Tensor:
    """The encoder's word embeddings [vocabulary, dim]: the module's own, or the LSTM
    meta-learner's, which keeps the learner's weights in one vector (initial_theta)."""
    if hasattr(model, "initial_theta"):
        shapes = dict(zip(model.param_names, model.param_shapes))
        name = next(name for name in model.param_names if name.endswith("embedding.weight"))
        start = sum(shapes[other].numel() for other in model.param_names[
            :model.param_names.index(name)])
        return model.initial_theta[start:start + shapes[name].numel()].view(shapes[name])
    return next(m for m in model.modules() if isinstance(m, WordEmbedding)).weight


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_its_text_encoder(algorithm, table, tmp_path, one_thread):
    """Two training steps move the word embeddings (the gradient reaches the encoder through
    the algorithm), and the trained model predicts a test episode's queries."""
    torch.manual_seed(0)
    # MANN and the NTM pick the MLP that reads pixels: on texts, an encoder is named
    encoder = ["backbone=bag_of_embeddings"] if algorithm in ("mann", "ntm") else []
    datamodule, model = build(text_config(table, tmp_path, f"algorithm={algorithm}", *encoder,
                                          *SMALL))
    embeddings = word_embeddings(model)
    before = embeddings.detach().clone()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, datamodule=datamodule)
    moved = (word_embeddings(model).detach() - before).abs().amax(1)
    assert moved.max() > 0, f"{algorithm} did not train the word embeddings"
    assert moved[0] == 0  # the padding row never learns
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    scores = score_episodes(model.eval(), batch)
    assert scores.shape == (batch.batch_size,) and ((scores >= 0) & (scores <= 1)).all()


def test_a_checkpoint_keeps_its_vocabulary_for_other_texts(table, tmp_path):
    """eval.py on another table encodes it with the training run's vocabulary: words the
    training texts never had are [UNK], whatever the other table's own words."""
    cfg = text_config(table, tmp_path, *SMALL)
    train(cfg)
    trained = instantiate_dataset(cfg).tokenizer
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(
        f"zebra quilt river {i},new_{i % 20}\n" for i in range(200)))
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    eval_cfg = make_config([f"ckpt_path={checkpoint}", f"dataset.path={other}",
                            "episode.n_way=3", "episode.k_shot=1", "episode.query_size=3",
                            "episode.test_episodes=6"], tmp_path / "eval", "eval")
    overrides = [f"dataset.path={other}", "episode.n_way=3", "episode.k_shot=1",
                 "episode.query_size=3", "episode.test_episodes=6"]
    run = stored_run(str(checkpoint), eval_cfg, overrides)
    assert run.tokenizer.state() == trained.state()
    tasks = instantiate_dataset(run.cfg, run.tokenizer)
    assert tasks.tokenizer.tokens == trained.tokens
    ids = tasks.tokenizer.encode(["zebra quilt river"])[0]
    assert ids[:2] == [1, 1] and ids[2] == trained.tokens.index("river")
    result = evaluate(eval_cfg, overrides)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["test_acc"] == \
        result["test_acc"]
    tta_cfg = make_config([f"ckpt_path={checkpoint}", "eval.tta=2"], tmp_path / "tta", "eval")
    with pytest.raises(UserError) as caught:
        evaluate(tta_cfg, ["eval.tta=2"])
    assert str(caught.value) == ("eval.tta=2 averages over augmented views of each episode, and "
                                 "dataset=text has no augmentation (texts, feature tables and "
                                 "the sinusoid are not augmented); use eval.tta=1")


# Learning WordNet definitions ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not WORDNET.is_dir(), reason=f"no WordNet database at {WORDNET}")
@pytest.mark.parametrize("budget", ["protonet (wordnet)", "protonet wordllama (wordnet)",
                                    "anil (wordnet)", "baseline (wordnet)"])
def test_learns_wordnet_definitions(budget, tmp_path):
    record = train(make_config(BUDGETS[budget].overrides, tmp_path))
    assert (record["dataset"], record["n_way"], record["k_shot"]) == ("wordnet", 5, 1)
    BUDGETS[budget].check(record)


def test_the_python_api_takes_raw_texts_as_the_tokenizer_encodes_them(table, tmp_path):
    from metalearn import MetaLearner

    overrides = [f"dataset.path={table}", f"paths.data_dir={tmp_path}/data", "episode.n_way=3"]
    learner = MetaLearner("protonet", dataset="text", overrides=overrides,
                          output_dir=tmp_path / "api")
    texts, labels = ["a red river", "the quiet engine", "an old garden"], [0, 1, 2]
    queries = ["river red here", "engine quiet", "garden old", "zebra"]
    tokenizer = learner.tasks.tokenizer
    ids = torch.zeros(3, 3, dtype=torch.long)  # padded to the longest, as the loader pads
    for row, encoded in zip(ids, tokenizer.encode(texts)):
        row[:len(encoded)] = torch.tensor(encoded)
    from_texts = learner.adapt({"x": texts, "y": labels})(queries)
    from_ids = learner.adapt({"x": ids, "y": labels})(
        torch.nn.utils.rnn.pad_sequence([torch.tensor(q) for q in tokenizer.encode(queries)],
                                        batch_first=True))
    assert torch.allclose(from_texts, from_ids)
    with pytest.raises(UserError) as caught:
        learner.adapt({"x": torch.rand(3, 5), "y": labels})
    assert str(caught.value) == ("support_set x has shape (3, 5) (torch.float32); this protonet "
                                 "learner takes texts (a list of strings) or integer token ids "
                                 "[examples, at most 64]")


def test_compare_scores_text_models_of_other_tokenizers_on_the_same_episodes(table, tmp_path):
    """A word-vocabulary model and a WordLlama one: each checkpoint's texts are encoded its own
    way, and both are scored on the same episodes (the same classes and texts)."""
    from metalearn import MetaLearner
    from metalearn.run.compare import compare

    overrides = [f"dataset.path={table}", f"paths.data_dir={tmp_path}/data"]
    paths = [MetaLearner("protonet", dataset="text", overrides=[*overrides, *backbone],
                         output_dir=tmp_path / name).save(tmp_path / f"{name}.ckpt")
             for name, backbone in (("words", []), ("wordllama", ["backbone=wordllama"]))]
    argv = [f"ckpt_paths=[{','.join(map(str, paths))}]", "episode.test_episodes=12"]
    comparison = compare(make_config(argv, tmp_path / "compare", "compare"), argv)
    words, wordllama = comparison["checkpoints"]
    assert words["test_acc"] != wordllama["test_acc"]
    assert words["test_classes"] == wordllama["test_classes"]
    # each as eval.py scores it alone, on those episodes
    for path, record in zip(paths, (words, wordllama)):
        alone = [f"ckpt_path={path}", "episode.test_episodes=12"]
        result = evaluate(make_config(alone, tmp_path / f"eval_{path.stem}", "eval"), alone)
        assert result["test_acc"] == pytest.approx(record["test_acc"])
