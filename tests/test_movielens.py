"""MovieLens cold-start tasks (`dataset=movielens`): the three published layouts read alike, each
rating's inputs are what its movie and user say (statistics and the movie embedding from the
meta-train users only), a task is one user's distinct ratings, and bad files are one line each.
Every test writes its own tiny release in the exact published layout."""

from __future__ import annotations

import csv
import io
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from metalearn.data.episodes import TaskShape, seeded_generator
from metalearn.data.movielens import movielens, movielens_liked, read_movielens
from metalearn.data.task_family import EpisodeSettings
from metalearn.run.build import build
from tests.conftest import make_config
from tests.helpers import user_error

# id, title, year (None: none in the title), genres: a quoted title with a comma (3), latin-1
# letters and a comma (4), no year (5), a movie nobody rates (10); no two share genres and year
MOVIES = [(1, "Toy Story", 1995, ["Animation", "Comedy"]),
          (2, "Heat", 1995, ["Action", "Crime"]),
          (3, "Deer Hunter, The", 1978, ["Drama", "War"]),
          (4, "Amélie (Fabuleux destin d'Amélie Poulain, Le)", 2001, ["Comedy", "Romance"]),
          (5, "Untitled", None, ["Drama"]),
          (6, "Alien", 1979, ["Horror", "Sci-Fi"]),
          (7, "Casablanca", 1942, ["Drama", "Romance"]),
          (8, "Matrix, The", 1999, ["Action", "Sci-Fi"]),
          (9, "Fargo", 1996, ["Comedy", "Crime", "Drama"]),
          (10, "Never Rated", 1990, ["Comedy"])]
GENRES = ["Action", "Animation", "Comedy", "Crime", "Drama", "Horror", "Romance", "Sci-Fi", "War"]
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]
AGE_GROUPS = [1, 18, 25, 35, 45, 50, 56]  # ml-1m's age codes
OCCUPATIONS = ["student", "engineer", "writer"]  # ml-100k's are words, ml-1m's codes
OCCUPATION_CODES = [4, 17, 20]


def user_of(user: int) -> dict:
    """User `user`'s demographics as ml-100k and ml-1m write them."""
    return {"gender": "F" if user % 2 else "M", "age": 20 + 3 * user,
            "age_group": AGE_GROUPS[user % 7], "occupation": OCCUPATIONS[user % 3],
            "occupation_code": OCCUPATION_CODES[user % 3]}


def canonical_ratings() -> list[tuple[int, int, int]]:
    """(user, movie, rating): users 1-11 rate movies 1-9, user 12 only movies 1-3; whole stars,
    which every layout holds."""
    rng = np.random.default_rng(7)
    return [(user, movie, int(rng.integers(1, 6)))
            for user in range(1, 13) for movie in (range(1, 10) if user < 12 else range(1, 4))]


def titled(title: str, year: int | None) -> str:
    return title if year is None else f"{title} ({year})"


def write_latest_small(root: Path, ratings=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{m},{r:.1f},{1260759144 + i}" for i, (u, m, r) in enumerate(ratings or
                                                                           canonical_ratings())]
    (root / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["movieId", "title", "genres"])
    for movie, title, year, genres in MOVIES:
        writer.writerow([movie, titled(title, year), "|".join(genres)])
    (root / "movies.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return root


def write_100k(root: Path, ratings=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text("".join(
        f"{u}\t{m}\t{r}\t{881250949 + i}\n"
        for i, (u, m, r) in enumerate(ratings or canonical_ratings())))
    items = []
    for movie, title, year, genres in MOVIES:
        date = "" if year is None else f"01-Jan-{year}"
        flags = "|".join("1" if genre in genres else "0" for genre in GENRES_100K)
        items.append(f"{movie}|{titled(title, year)}|{date}||"
                     f"http://us.imdb.com/M/title-exact?{title.replace(' ', '%20')}|{flags}\n")
    (root / "u.item").write_bytes("".join(items).encode("latin-1"))
    (root / "u.user").write_text("".join(
        f"{u}|{user_of(u)['age']}|{user_of(u)['gender']}|{user_of(u)['occupation']}|55455\n"
        for u in range(1, 13)))
    return root


def write_1m(root: Path, ratings=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_text("".join(
        f"{u}::{m}::{r}::{978300760 + i}\n"
        for i, (u, m, r) in enumerate(ratings or canonical_ratings())))
    (root / "movies.dat").write_bytes("".join(
        f"{movie}::{titled(title, year)}::{'|'.join(genres)}\n"
        for movie, title, year, genres in MOVIES).encode("latin-1"))
    (root / "users.dat").write_text("".join(
        f"{u}::{user_of(u)['gender']}::{user_of(u)['age_group']}::"
        f"{user_of(u)['occupation_code']}::55455\n" for u in range(1, 13)))
    return root


WRITERS = {"latest_small": write_latest_small, "100k": write_100k, "1m": write_1m}


def stars(family, split: str) -> np.ndarray:
    """The ratings of a regression family's split, back in stars."""
    return (family.rows(split).targets[:, 0].double() * family.target_scale
            + family.target_offset).numpy()


def row_table(family, split: str) -> pd.DataFrame:
    """user, movie and stars of each row of a regression family's split."""
    rows = family.rows(split)
    users = np.repeat(np.array(rows.names, dtype=np.int64), rows.counts.numpy())
    return pd.DataFrame({"user": users, "movie": family.movie_ids[rows.items.numpy()],
                         "rating": stars(family, split).round(6)})


def feature(family, split: str, user: int, movie: int, name: str) -> float:
    """Feature `name` of user's rating of movie."""
    table = row_table(family, split)
    (row,) = np.flatnonzero((table["user"] == user) & (table["movie"] == movie))
    return float(family.rows(split).features[row, family.feature_names.index(name)])


def split_of(family, user: int) -> str:
    return next(split for split, users in family.split_record().items() if str(user) in users)


# Reading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["latest_small", "100k", "1m"])
def test_each_published_format_reads_the_same_ratings_and_movies(tmp_path, form):
    data = read_movielens(str(WRITERS[form](tmp_path / form)))
    assert data.format == form
    expected = pd.DataFrame(canonical_ratings(), columns=["user", "movie", "rating"])
    pd.testing.assert_frame_equal(data.ratings.reset_index(drop=True),
                                  expected.astype({"rating": float}))
    assert data.movies.index.tolist() == list(range(1, 11))
    for movie, _, year, genres in MOVIES:  # the quoted, comma and latin-1 titles included
        row = data.movies.loc[movie]
        assert (math.isnan(row["year"]) if year is None else row["year"] == year), movie
        flagged = [name.removeprefix("genre=") for name in data.movies.columns
                   if name.startswith("genre=") and row[name] == 1]
        assert sorted(flagged) == sorted(genres), movie


def test_a_zip_as_published_reads_as_its_folder(tmp_path):
    folder = write_100k(tmp_path / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in folder.iterdir():
            zipped.write(file, f"ml-100k/{file.name}")
    pd.testing.assert_frame_equal(read_movielens(str(archive)).ratings,
                                  read_movielens(str(folder)).ratings)


# Inputs -----------------------------------------------------------------------------------------
def hand_standardized(value: float, train_values: list[float]) -> float:
    mean = sum(train_values) / len(train_values)
    std = math.sqrt(sum((v - mean) ** 2 for v in train_values) / len(train_values))
    return (value - mean) / std


def train_rows(family) -> list[tuple[int, int, int]]:
    train = {int(user) for user in family.split_record()["train"]}
    return [(u, m, r) for u, m, r in canonical_ratings() if u in train]


@pytest.mark.parametrize("form", ["latest_small", "100k", "1m"])
def test_a_rating_row_holds_its_movies_genres_and_year_and_its_users_demographics(tmp_path, form):
    family = movielens(str(WRITERS[form](tmp_path / form)), min_ratings=1)
    years = {movie: year for movie, _, year, _ in MOVIES}
    train_years = [years[m] for _, m, _ in train_rows(family) if years[m] is not None]
    user = int(family.split_record()["test"][0])
    split = split_of(family, user)
    genre_names = GENRES_100K if form == "100k" else GENRES
    demographics = {"latest_small": [],
                    "100k": ["gender=F", "gender=M", "age", *(
                        f"occupation={o}" for o in sorted(OCCUPATIONS))],
                    "1m": ["gender=F", "gender=M", *(f"age={a}" for a in AGE_GROUPS),
                           *(f"occupation={o}" for o in OCCUPATION_CODES)]}[form]
    assert family.feature_names == tuple(
        [f"genre={g}" for g in genre_names] + ["year"] + demographics)
    for movie in (3, 4, 5, 9):
        genres = MOVIES[movie - 1][3]
        for genre in genre_names:
            assert feature(family, split, user, movie, f"genre={genre}") == (genre in genres)
    assert feature(family, split, user, 3, "year") == pytest.approx(
        hand_standardized(1978, train_years), abs=1e-5)
    assert feature(family, split, user, 5, "year") == 0.0  # no year: the meta-train mean
    person = user_of(user)
    if form != "latest_small":
        assert feature(family, split, user, 3, f"gender={person['gender']}") == 1
        assert feature(family, split, user, 3, f"gender={'MF'[person['gender'] == 'M']}") == 0
    if form == "100k":
        train_ages = [user_of(u)["age"] for u, _, _ in train_rows(family)]
        assert feature(family, split, user, 3, "age") == pytest.approx(
            hand_standardized(person["age"], train_ages), abs=1e-5)
        for occupation in OCCUPATIONS:
            assert feature(family, split, user, 3, f"occupation={occupation}") == (
                occupation == person["occupation"])
    if form == "1m":
        for group in AGE_GROUPS:
            assert feature(family, split, user, 3, f"age={group}") == (group == person["age_group"])
        for code in OCCUPATION_CODES:
            assert feature(family, split, user, 3, f"occupation={code}") == (
                code == person["occupation_code"])


def test_users_are_split_disjointly_with_all_their_ratings(tmp_path):
    family = movielens(str(write_latest_small(tmp_path / "ml")), min_ratings=1)
    splits = {split: set(users) for split, users in family.split_record().items()}
    assert [len(users) for users in splits.values()] == [8, 2, 2]
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"]
                or splits["val"] & splits["test"])
    assert set().union(*splits.values()) == {str(u) for u in range(1, 13)}
    read = pd.concat([row_table(family, split) for split in splits])
    expected = pd.DataFrame(canonical_ratings(), columns=["user", "movie", "rating"])
    assert sorted(map(tuple, read.to_numpy().tolist())) == sorted(
        map(tuple, expected.astype(float).to_numpy().tolist()))


def test_min_ratings_leaves_out_small_users_in_one_counted_line(tmp_path, caplog):
    root = str(write_latest_small(tmp_path / "ml"))
    with caplog.at_level(logging.WARNING, logger="metalearn.data.movielens"):
        family = movielens(root, min_ratings=5)
    assert "12" not in {user for users in family.split_record().values() for user in users}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "dataset.min_ratings=5 leaves out 1 of the 12 users (3 ratings)"


def test_targets_are_standardised_by_the_meta_train_ratings(tmp_path):
    family = movielens(str(write_latest_small(tmp_path / "ml")), min_ratings=1)
    train_stars = [r for _, _, r in train_rows(family)]
    mean = sum(train_stars) / len(train_stars)
    assert family.target_offset == pytest.approx(mean)
    assert family.target_scale == pytest.approx(
        math.sqrt(sum((r - mean) ** 2 for r in train_stars) / len(train_stars)))
    assert family.rows("train").targets.mean() == pytest.approx(0, abs=1e-6)


def changed(ratings: list[tuple[int, int, int]], user: int) -> list[tuple[int, int, int]]:
    """`user`'s ratings changed: other stars, one movie dropped, the movie nobody rated added."""
    mine = [(u, m, 6 - r) for u, m, r in ratings if u == user and m != 1] + [(user, 10, 5)]
    return [rating for rating in ratings if rating[0] != user] + mine


@pytest.mark.parametrize("movie_embedding", [0, 2])
def test_meta_train_statistics_and_movie_embedding_ignore_the_other_users(tmp_path,
                                                                          movie_embedding):
    """Changing a meta-test user's ratings moves nothing of the meta-train inputs and targets
    (year and target standardisation, movie embedding); changing a meta-train user's does."""
    before = movielens(str(write_100k(tmp_path / "a")), min_ratings=1,
                       movie_embedding=movie_embedding)
    test_user, train_user = (int(before.split_record()[split][0]) for split in ("test", "train"))
    after_test = movielens(str(write_100k(tmp_path / "b", changed(canonical_ratings(),
                                                                   test_user))),
                           min_ratings=1, movie_embedding=movie_embedding)
    after_train = movielens(str(write_100k(tmp_path / "c", changed(canonical_ratings(),
                                                                    train_user))),
                            min_ratings=1, movie_embedding=movie_embedding)
    assert after_test.split_record() == before.split_record()
    assert (after_test.target_offset, after_test.target_scale) == (before.target_offset,
                                                                   before.target_scale)
    assert torch.equal(after_test.rows("train").features, before.rows("train").features)
    # a meta-train user's change moves them: the targets, another meta-train user's inputs
    other = int(before.split_record()["train"][1])
    assert after_train.target_offset != before.target_offset
    assert (feature(after_train, "train", other, 3, "year")
            != feature(before, "train", other, 3, "year"))
    if movie_embedding:
        assert (feature(after_train, "train", other, 2, "mf_bias")
                != feature(before, "train", other, 2, "mf_bias"))
    if movie_embedding:
        names = before.feature_names
        assert names[-3:] == ("mf_bias", "mf_factor_0", "mf_factor_1")
        # the movie only the changed meta-test user rated has no meta-train rating: zeros
        assert feature(after_test, "test", test_user, 10, "mf_bias") == 0
        assert feature(after_test, "test", test_user, 10, "mf_factor_1") == 0
        assert feature(after_test, "test", test_user, 2, "mf_bias") != 0


# Episodes ---------------------------------------------------------------------------------------
def test_a_rating_task_is_distinct_ratings_of_one_user(tmp_path):
    family = movielens(str(write_latest_small(tmp_path / "ml")), min_ratings=1)
    family.check_fits(EpisodeSettings(2, 3, 4), "movielens")
    rows = family.rows("train")
    groups, picked = family.episode_rows("train", TaskShape(1, 3, 4), 64, seeded_generator(1))
    for group, task_rows in zip(groups.tolist(), picked):
        assert len(set(task_rows.tolist())) == 7
        assert ((task_rows >= rows.offsets[group]) & (task_rows < rows.offsets[group + 1])).all()
        assert len(set(rows.items[task_rows].tolist())) == 7  # seven different movies
    assert set(groups.tolist()) <= set(range(rows.num_groups))


def test_rating_metrics_rank_the_query_movies_by_prediction_in_stars(tmp_path):
    family = movielens(str(write_latest_small(tmp_path / "ml")), min_ratings=1,
                       ndcg_at=[1, 2])
    ratings = torch.tensor([[5.0, 3.0, 1.0]])
    targets = ((ratings - family.target_offset) / family.target_scale).unsqueeze(-1)
    predictions = torch.tensor([[0.0, 1.0, 2.0]]).unsqueeze(-1)  # the worst first
    metrics = family.episode_metrics(predictions, targets)
    # ranked 1, 3, 5 stars; the ideal 5, 3
    assert metrics["ndcg@1"].item() == pytest.approx(1 / 5)
    second = 3 / math.log2(3)  # 3 stars at rank 2
    assert metrics["ndcg@2"].item() == pytest.approx((1 + second) / (5 + second))
    assert family.episode_metrics(targets, targets)["ndcg@2"].item() == pytest.approx(1)
    assert family.episode_metrics(targets, targets)["mae"].item() == pytest.approx(0, abs=1e-6)


def test_liked_labels_follow_the_threshold(tmp_path):
    root = str(write_1m(tmp_path / "ml"))
    stars_of = {(u, m): r for u, m, r in canonical_ratings()}
    for threshold in (3, 4):
        family = movielens_liked(root, liked_threshold=threshold, min_ratings=1)
        for split, users in family.split_record().items():
            rows = family.rows(split)
            movies = family.movie_ids[rows.items.numpy()]
            owners = np.repeat(np.array(users, dtype=np.int64), rows.counts.numpy())
            labels = rows.targets[:, 0].tolist()
            assert labels == [float(stars_of[(u, m)] >= threshold)
                              for u, m in zip(owners, movies)]


def test_a_liked_task_is_k_and_q_distinct_ratings_of_each_label_of_one_user(tmp_path, caplog):
    family = movielens_liked(str(write_latest_small(tmp_path / "ml")), min_ratings=1)
    with caplog.at_level(logging.WARNING, logger="metalearn.data.movielens"):
        family.check_fits(EpisodeSettings(2, 1, 1), "movielens_liked")
    counts = family.label_counts["train"].min(1).values
    if (counts < 2).any():
        assert f"{int((counts < 2).sum())} of the 8 meta-train users" in caplog.text
    batch = family.sample("train", TaskShape(2, 1, 1), 32, seeded_generator(2))
    rows = family.rows("train")
    assert batch.classes.shape == (32, 1)
    assert sorted(batch.support_y[0].tolist()) == [0, 1] == sorted(batch.query_y[0].tolist())
    for task in range(32):
        user = int(batch.classes[task, 0])
        assert counts[user] >= 2
        mine = range(int(rows.offsets[user]), int(rows.offsets[user + 1]))
        found = []
        for x, y in [*zip(batch.support_x[task], batch.support_y[task]),
                     *zip(batch.query_x[task], batch.query_y[task])]:
            (row,) = [r for r in mine if torch.equal(rows.features[r], x)]
            assert rows.targets[row, 0] == y  # the rating's own label
            found.append(row)
        assert len(set(found)) == 4  # distinct ratings


def test_liked_metrics_rank_by_the_liked_score(tmp_path):
    family = movielens_liked(str(write_latest_small(tmp_path / "ml")), min_ratings=1,
                       ndcg_at=[1, 3])
    # liked scores 2, -1, 0.5, -3
    logits = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.5], [3.0, 0.0]]])
    labels = torch.tensor([[0, 1, 1, 0]])
    metrics = family.episode_metrics(logits, labels)
    assert metrics["ndcg@1"].item() == 0  # a not-liked movie ranked first
    ideal = 1 + 1 / math.log2(3)
    assert metrics["ndcg@3"].item() == pytest.approx((1 / math.log2(3) + 1 / 2) / ideal)


def test_liked_tasks_are_two_way_and_need_enough_of_each_label(tmp_path):
    family = movielens_liked(str(write_latest_small(tmp_path / "ml")), min_ratings=1)
    assert user_error(family.check_fits, EpisodeSettings(5, 1, 1), "movielens_liked") == (
        "episode.n_way=5: movielens_liked's tasks are 2-way, liked (a rating >= "
        "dataset.liked_threshold=4) or not; set episode.n_way=2")
    assert user_error(family.check_fits, EpisodeSettings(2, 1, 1, 20), "movielens_liked"
                      ).startswith("episode.train_n_way=20:")
    assert user_error(family.check_fits, EpisodeSettings(2, 4, 4), "movielens_liked"
                      ).startswith("episode.k_shot + episode.query_size = 8 ratings of each label "
                                   "(liked and not) is more than any meta-train user of "
                                   "movielens_liked has (the most is ")


# Configs ----------------------------------------------------------------------------------------
def test_the_configs_build_a_regression_and_a_two_way_run(tmp_path):
    root = write_latest_small(tmp_path / "ml")
    cfg = make_config(["dataset=movielens", f"dataset.root={root}", "dataset.min_ratings=1",
                       "algorithm=maml", "episode.k_shot=2", "episode.query_size=3"], tmp_path)
    assert (cfg.episode.n_way, cfg.backbone._target_.rsplit(".", 1)[1]) == (5, "MLP")
    assert instantiate(cfg.dataset).task_type == "regression"
    data, _ = build(cfg)
    assert data.tasks.task_type == "regression"
    liked = make_config(["dataset=movielens_liked", f"dataset.root={root}",
                         "dataset.min_ratings=1", "algorithm=protonet", "episode.k_shot=1",
                         "episode.query_size=1", "episode.train_query_size=1"], tmp_path / "liked")
    assert liked.episode.n_way == 2
    data, _ = build(liked)
    assert data.tasks.task_type == "classification"


def test_config_defaults(tmp_path):
    cfg = make_config(["dataset=movielens", "dataset.root=x"], tmp_path)
    assert (cfg.episode.k_shot, cfg.episode.query_size) == (5, 10)
    liked = make_config(["dataset=movielens_liked", "dataset.root=x"], tmp_path / "l")
    assert (liked.episode.n_way, liked.episode.k_shot, liked.episode.query_size) == (2, 3, 5)
    assert liked.dataset._target_.endswith("movielens_liked")


# Bad input --------------------------------------------------------------------------------------
def test_a_folder_without_a_release_names_the_files_formats_and_where_to_get_them(tmp_path):
    write_100k(tmp_path / "ml-100k")
    message = user_error(movielens, str(tmp_path))
    for part in ("ratings.csv, movies.csv", "u.data, u.item, u.user",
                 "ratings.dat, movies.dat, users.dat", "https://grouplens.org/datasets/movielens/",
                 "ml-latest-small.zip", "ml-100k.zip", "ml-1m.zip", "unzipped folder",
                 f"{tmp_path / 'ml-100k'} holds one: set dataset.root to it"):
        assert part in message, part
    (tmp_path / "ml-100k" / "u.user").unlink()
    assert "has u.data, u.item but not u.user" in user_error(movielens,
                                                             str(tmp_path / "ml-100k"))
    assert user_error(movielens, str(tmp_path / "nowhere")).startswith(
        f"dataset.root={str(tmp_path / 'nowhere')!r}: no such folder")


def test_a_format_asked_for_must_be_there_and_be_known(tmp_path):
    root = str(write_latest_small(tmp_path / "ml"))
    message = user_error(movielens, root, "1m")
    assert "has no ratings.dat, movies.dat, users.dat, which dataset.format=1m reads" in message
    assert "ml-1m.zip at https://grouplens.org/datasets/movielens/" in message
    assert user_error(movielens, root, "10m").startswith(
        "dataset.format='10m' is not a format read; use one of latest_small, 100k, 1m")


@pytest.mark.parametrize("form, file, text", [
    ("latest_small", "ratings.csv", "user,item,score\n1,1,4\n"),
    ("100k", "u.data", "1,1,4,881250949\n2,1,3,881250950\n"),
    ("1m", "ratings.dat", "1,1,4,978300760\n"),
])
def test_a_ratings_file_of_another_layout_is_named_with_the_formats_read(tmp_path, form, file,
                                                                         text):
    root = WRITERS[form](tmp_path / "ml")
    (root / file).write_text(text)
    message = user_error(movielens, str(root))
    assert message.startswith(f"{root / file} is not in a MovieLens layout")
    assert message.endswith(
        "the layouts read are ml-latest-small (ratings.csv: userId,movieId,rating,timestamp "
        "below that header), ml-100k (u.data: user item rating timestamp, tab-separated), ml-1m "
        "(ratings.dat: UserID::MovieID::Rating::Timestamp)")


def test_a_rating_that_is_not_a_number_is_named_by_file_and_line(tmp_path):
    root = write_latest_small(tmp_path / "ml")
    lines = (root / "ratings.csv").read_text().splitlines()
    lines[2] = "1,2,four,1260759145"
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    assert user_error(movielens, str(root)) == (
        f"{root / 'ratings.csv'} line 3: rating 'four' is not a number (1 such rows); fix or "
        "remove them")
    root = write_1m(tmp_path / "m1")
    (root / "ratings.dat").write_text("1::1::4::9\n1::x::4::9\n")
    assert user_error(movielens, str(root)).startswith(
        f"{root / 'ratings.dat'} line 2: movie id 'x' is not a number")


def test_a_rating_of_a_movie_the_movies_file_lacks_is_refused(tmp_path):
    root = write_100k(tmp_path / "ml", canonical_ratings() + [(1, 99, 4)])
    assert user_error(movielens, str(root)).startswith(
        f"rating {len(canonical_ratings()) + 1} of u.data names movie 99, which u.item does not "
        "list (1 such ratings)")


def test_a_movie_listed_twice_is_refused(tmp_path):
    root = write_1m(tmp_path / "ml")
    with open(root / "movies.dat", "ab") as movies:
        movies.write("3::Deer Hunter, The (1978)::Drama|War\n".encode("latin-1"))
    assert user_error(movielens, str(root)) == (
        "movies.dat lists movie 3 more than once; a release lists each once")


def test_too_few_users_for_the_splits_is_refused(tmp_path):
    two_large = [(u, m, r) for u, m, r in canonical_ratings() if u <= 2 or m <= 3]
    root = str(write_latest_small(tmp_path / "ml", two_large))
    message = user_error(movielens, root, None, 5)
    assert message.startswith("none of the 2 users is in the val split")
    assert "dataset.min_ratings=5" in message


def test_bad_settings_are_named(tmp_path):
    root = str(write_latest_small(tmp_path / "ml"))
    assert user_error(lambda: movielens(root, ndcg_at=3)).startswith("dataset.ndcg_at=3 must be")
    assert user_error(lambda: movielens(root, movie_embedding=-1)).startswith(
        "dataset.movie_embedding=-1 must be a whole number >= 0")
