"""Cold-start recommendation on MovieLens: `dataset=movielens dataset.root=ml-latest-small`.

A task is one user, the new user a recommender meets with a few ratings (MeLU, Lee et al., KDD
2019: MAML for cold-start recommendation on MovieLens): K of the user's ratings to adapt from and
Q others of theirs to predict. Users, never ratings, are split between meta-train, meta-val and
meta-test (`split_fractions`, `split_seed`), so a test task is a user no learner has seen; users
with fewer than `min_ratings` ratings are left out first (counted in one line).

The three layouts GroupLens publishes (https://grouplens.org/datasets/movielens/) are read from
the unzipped folder, or the .zip itself, at `root` (`format` names one, or the files present
choose): ml-latest-small (ratings.csv and movies.csv, UTF-8 CSV with headers; ml-latest and
ml-25m share the layout), ml-100k (u.data, tab-separated; u.item and u.user, '|'-separated
latin-1) and ml-1m (ratings.dat, movies.dat, users.dat: '::'-separated latin-1).

A rating's inputs are what a recommender knows of a new user's movie without other users: its
content (the genres, multi-hot; the release year, standardised on the meta-train ratings, a
missing one given the meta-train mean) and the user's demographics where the release has them
(ml-100k: gender, age and occupation; ml-1m: gender, age group and occupation code, all one-hot;
ml-latest-small has none). With `movie_embedding` = D > 0, also each movie's bias and D factors
from a biased matrix factorisation (metalearn/data/matrix_factorization.py) fitted on the
meta-train users' ratings only: what the ratings of known users say about a movie. A movie that
no meta-train user rated gets zeros (counted in one line).

Two kinds of task:
- `dataset=movielens`: regression on the rating, standardised by the meta-train ratings' mean and deviation
  (`MovieLensRatings`, per-episode MAE and RMSE in stars, and nDCG@k of the query movies ranked
  by the predicted rating, relevance the true rating: MeLU's metric);
- `dataset=movielens_liked`: 2-way classification, label 1 a rating of at least `liked_threshold` (`MovieLensLiked`,
  K support and Q query ratings of each label per user, and nDCG@k with relevance 1 for a liked
  movie).
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metalearn.data.episodes import ExampleBatch, TaskBatch, TaskShape, gather
from metalearn.data.features import assign_splits
from metalearn.data.grouped import GroupedRegression, GroupedRows, RowsByGroup
from metalearn.data.matrix_factorization import fit_biased_mf
from metalearn.data.ranking import ndcg_at_k
from metalearn.data.task_family import EpisodeSettings, TaskFamily
from metalearn.errors import UserError, check_finite_number, check_whole_number

log = logging.getLogger(__name__)
GROUPLENS = "https://grouplens.org/datasets/movielens/"
#: ml-100k's genre flags in u.item, in order (its README and u.genre)
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
TITLE_YEAR = r"\((\d{4})\)\s*$"  # "Toy Story (1995)"


class Files:
    """The files of a release at dataset.root: an unzipped folder or the .zip GroupLens
    publishes (whose files sit in one folder inside it)."""

    def __init__(self, root: str):
        self.root = Path(root).expanduser()
        if self.root.is_dir():
            self.archive = None
            self.members = {path.name: path.name for path in self.root.iterdir() if path.is_file()}
        elif self.root.is_file() and zipfile.is_zipfile(self.root):
            self.archive = self.root
            with zipfile.ZipFile(self.root) as archive:
                self.members = {PurePosixPath(name).name: name for name in archive.namelist()
                                if not name.endswith("/") and len(PurePosixPath(name).parts) <= 2}
        else:
            raise UserError(f"dataset.root={root!r}: no such folder (or .zip file); point it at "
                            f"an unzipped MovieLens release from {GROUPLENS}")

    def has(self, name: str) -> bool:
        return name in self.members

    def where(self, name: str) -> str:
        """The file, for messages."""
        if self.archive is None:
            return str(self.root / name)
        return f"{self.root}:{self.members[name]}"

    def read(self, name: str) -> bytes:
        if self.archive is None:
            return (self.root / name).read_bytes()
        with zipfile.ZipFile(self.archive) as archive:
            return archive.read(self.members[name])


class MovieLens(NamedTuple):
    """A release's tables in one form, whatever its layout.

    `ratings`: user, movie (their ids) and rating, one row per rating in file order; `movies`:
    indexed by movie id (ascending), the release year (NaN where unknown) and one 0/1 column
    per genre, named "genre=<name>"; `users`: indexed by user id, the demographics (None where the
    release has none), of which `categorical` are one-hot encoded and the others numbers.
    """

    format: str
    ratings: pd.DataFrame
    movies: pd.DataFrame
    users: pd.DataFrame | None
    categorical: tuple[str, ...] = ()


class Layout(NamedTuple):
    """A published layout: its files (the ratings first), GroupLens's archive of it, what a
    line of its ratings file holds (for the message of an unknown layout) and its reader."""

    files: tuple[str, ...]
    archive: str
    ratings_layout: str
    read: Callable[[Files], MovieLens]


def read_latest_small(files: Files) -> MovieLens:
    ratings = read_table(files, "ratings.csv", ",", None, "utf-8")
    check_header(files, "ratings.csv", ratings, ("userId", "movieId", "rating"))
    movies = read_table(files, "movies.csv", ",", None, "utf-8")
    check_header(files, "movies.csv", movies, ("movieId", "title", "genres"))
    ratings = rating_frame(files, "ratings.csv", ratings, ("userId", "movieId", "rating"), 2)
    ids = numbers(files, "movies.csv", movies["movieId"], "movieId", 2).astype(np.int64)
    return MovieLens("latest_small", ratings,
                     movie_frame(ids, title_years(movies["title"]), movies["genres"]), None)


def read_100k(files: Files) -> MovieLens:
    ratings = read_table(files, "u.data", "\t", 4, "latin-1")
    items = read_table(files, "u.item", "|", 5 + len(GENRES_100K), "latin-1")
    users = read_table(files, "u.user", "|", 5, "latin-1")
    ratings = rating_frame(files, "u.data", ratings, (0, 1, 2), 1)
    ids = numbers(files, "u.item", items[0], "movie id", 1).astype(np.int64)
    # the release date "01-Jan-1995", else the title's year
    years = items[2].astype(str).str.extract(r"(\d{4})\s*$", expand=False).astype(float)
    years = years.fillna(title_years(items[1]))
    genres = items.iloc[:, 5:].set_axis([f"genre={name}" for name in GENRES_100K], axis=1)
    flags = pd.DataFrame({name: numbers(files, "u.item", genres[name], name, 1)
                          for name in genres.columns})
    movies = pd.concat([pd.DataFrame({"year": years.to_numpy()}), flags], axis=1)
    demographics = pd.DataFrame({
        "gender": users[2].to_numpy(),
        "age": numbers(files, "u.user", users[1], "age", 1),
        "occupation": users[3].to_numpy()},
        index=numbers(files, "u.user", users[0], "user id", 1).astype(np.int64))
    return MovieLens("100k", ratings, movies.set_axis(ids).sort_index(),
                     demographics.sort_index(), ("gender", "occupation"))


def read_1m(files: Files) -> MovieLens:
    ratings = read_table(files, "ratings.dat", "::", 4, "latin-1")
    movies = read_table(files, "movies.dat", "::", 3, "latin-1")
    users = read_table(files, "users.dat", "::", 5, "latin-1")
    ratings = rating_frame(files, "ratings.dat", ratings, (0, 1, 2), 1)
    ids = numbers(files, "movies.dat", movies[0], "MovieID", 1).astype(np.int64)
    demographics = pd.DataFrame({
        "gender": users[1].to_numpy(),
        # age groups and occupations are codes (its README): one-hot, as categories
        "age": numbers(files, "users.dat", users[2], "Age", 1).astype(np.int64),
        "occupation": numbers(files, "users.dat", users[3], "Occupation", 1).astype(np.int64)},
        index=numbers(files, "users.dat", users[0], "UserID", 1).astype(np.int64))
    return MovieLens("1m", ratings, movie_frame(ids, title_years(movies[1]), movies[2]),
                     demographics.sort_index(), ("gender", "age", "occupation"))


LAYOUTS = {
    "latest_small": Layout(("ratings.csv", "movies.csv"), "ml-latest-small.zip",
                           "userId,movieId,rating,timestamp below that header", read_latest_small),
    "100k": Layout(("u.data", "u.item", "u.user"), "ml-100k.zip",
                   "user item rating timestamp, tab-separated", read_100k),
    "1m": Layout(("ratings.dat", "movies.dat", "users.dat"), "ml-1m.zip",
                 "UserID::MovieID::Rating::Timestamp", read_1m),
}


def formats_read() -> str:
    """The layouts read, for messages: 'ml-latest-small (ratings.csv, movies.csv), ...'."""
    return ", ".join(f"{layout.archive.removesuffix('.zip')} ({', '.join(layout.files)})"
                     for layout in LAYOUTS.values())


def layouts_read() -> str:
    """What the ratings file of each layout read holds, for the message of an unknown one."""
    return ", ".join(f"{layout.archive.removesuffix('.zip')} ({layout.files[0]}: "
                     f"{layout.ratings_layout})" for layout in LAYOUTS.values())


def read_table(files: Files, name: str, separator: str, columns: int | None,
               encoding: str) -> pd.DataFrame:
    """A release's file as read: with its header (`columns` None), or `columns` unnamed columns;
    numbers parsed, other values kept as written ("NA" stays a title; a title's quotes too: only
    the CSV files quote)."""
    data = files.read(name)
    if separator == "::":  # pandas's C parser takes one character; ids and titles hold no tabs
        data, separator = data.replace(b"::", b"\t"), "\t"
    try:
        table = pd.read_csv(io.BytesIO(data), sep=separator, encoding=encoding,
                            keep_default_na=False, header=0 if columns is None else None,
                            quoting=csv.QUOTE_MINIMAL if columns is None else csv.QUOTE_NONE)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{files.where(name)}: line {line} holds bytes that are not {encoding}, "
                        "which this file is in its published layout") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise UserError(f"{files.where(name)} is not in a MovieLens layout ({message}); the "
                        f"layouts read are {layouts_read()}") from None
    if columns is not None and table.shape[1] != columns:
        raise UserError(f"{files.where(name)} is not in a MovieLens layout: its lines have "
                        f"{table.shape[1]} fields, not {columns}; the layouts read are "
                        f"{layouts_read()}")
    if len(table) == 0:
        raise UserError(f"{files.where(name)} holds no rows")
    return table


def check_header(files: Files, name: str, table: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise UserError(f"{files.where(name)} is not in a MovieLens layout: its header has no "
                        f"{', '.join(missing)} (it has {', '.join(map(str, table.columns))}); "
                        f"the layouts read are {layouts_read()}")


def numbers(files: Files, name: str, values: pd.Series, what: str, first_line: int) -> np.ndarray:
    """The column as float64, or one line naming the file, the line and the value that is not a
    finite number (`first_line`: the line of the first row)."""
    if pd.api.types.is_numeric_dtype(values):  # parsed as numbers already: the fast path
        parsed = values.to_numpy(np.float64)
    else:
        parsed = pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(
            np.float64)
    bad = ~np.isfinite(parsed)
    if bad.any():
        row = int(bad.argmax())
        raise UserError(f"{files.where(name)} line {row + first_line}: {what} "
                        f"{values.iloc[row]!r} is not a number ({int(bad.sum())} such rows); "
                        "fix or remove them")
    return parsed


def rating_frame(files: Files, name: str, table: pd.DataFrame, columns: Sequence,
                 first_line: int) -> pd.DataFrame:
    """user, movie and rating of each rating row: numbers (ids as integers)."""
    user, movie, rating = (numbers(files, name, table[column], what, first_line)
                           for column, what in zip(columns, ("user id", "movie id", "rating")))
    return pd.DataFrame({"user": user.astype(np.int64), "movie": movie.astype(np.int64),
                         "rating": rating})


def title_years(titles: pd.Series) -> pd.Series:
    """The year at the end of each title, "Heat (1995)" (NaN where there is none)."""
    return titles.astype(str).str.extract(TITLE_YEAR, expand=False).astype(float)


def movie_frame(ids: np.ndarray, years: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """Year and genre=<name> flags by movie id, from '|'-separated genres."""
    flags = genres.astype(str).str.get_dummies(sep="|").add_prefix("genre=")
    movies = pd.concat([pd.DataFrame({"year": years.to_numpy()}), flags.astype(np.float64)],
                       axis=1)
    return movies.set_axis(ids).sort_index()


def read_movielens(root: str, format: str | None = None) -> MovieLens:
    """The release at `root` (a folder or .zip), in `format` or the one whose files are there."""
    files = Files(root)
    if format is not None:
        if format not in LAYOUTS:
            raise UserError(f"dataset.format={format!r} is not a format read; use one of "
                            f"{', '.join(LAYOUTS)}, or null to find it by its files")
        absent = [name for name in LAYOUTS[format].files if not files.has(name)]
        if absent:
            raise UserError(f"dataset.root={root!r} has no {', '.join(absent)}, which "
                            f"dataset.format={format} reads ({', '.join(LAYOUTS[format].files)}); "
                            f"GroupLens publishes it as {LAYOUTS[format].archive} at {GROUPLENS}: "
                            "point dataset.root at the unzipped folder")
        return LAYOUTS[format].read(files)
    for layout in LAYOUTS.values():
        if all(files.has(name) for name in layout.files):
            return layout.read(files)
    raise UserError(missing_files_message(root, files))


def missing_files_message(root: str, files: Files) -> str:
    """What dataset.root lacks, the files of each layout, where GroupLens publishes them, and a
    folder inside root that holds a release."""
    partial = [f"{', '.join(name for name in layout.files if files.has(name))} but not "
               f"{', '.join(name for name in layout.files if not files.has(name))}"
               for layout in LAYOUTS.values() if any(files.has(name) for name in layout.files)]
    found = f"has {'; '.join(partial)}" if partial else "holds none of their files"
    inside = ([str(child) for child in sorted(files.root.iterdir()) if child.is_dir() and any(
        all((child / name).is_file() for name in layout.files) for layout in LAYOUTS.values())]
        if files.archive is None else [])
    hint = f"; {inside[0]} holds one: set dataset.root to it" if inside else ""
    return (f"dataset.root={root!r} is not a MovieLens release: it {found}; the formats read are "
            f"{formats_read()}, published at {GROUPLENS} as "
            f"{', '.join(layout.archive for layout in LAYOUTS.values())} (point dataset.root at "
            f"the unzipped folder){hint}")


def check_known(data: MovieLens) -> None:
    """Every movie and user is listed once, and every rating's movie is in the movies file and
    its user in the users file: files of different releases would otherwise meet silently."""
    ratings_file, movies_file, *users_file = LAYOUTS[data.format].files
    tables = [("movie", data.movies.index, movies_file)]
    if data.users is not None:
        tables.append(("user", data.users.index, users_file[0]))
    for column, index, file in tables:
        if not index.is_unique:
            raise UserError(f"{file} lists {column} {index[index.duplicated()][0]} more than "
                            "once; a release lists each once")
        unknown = ~data.ratings[column].isin(index).to_numpy()
        if unknown.any():
            first = int(unknown.argmax())
            raise UserError(f"rating {first + 1} of {ratings_file} names {column} "
                            f"{data.ratings[column].iloc[first]}, which {file} does not list "
                            f"({int(unknown.sum())} such ratings): are the files from different "
                            "releases? Unzip one release into dataset.root")


def kept_users(ratings: pd.DataFrame, min_ratings: int) -> pd.DataFrame:
    """The ratings of users with at least `min_ratings`, the others counted in one line."""
    counts = ratings["user"].value_counts()
    small = counts[counts < min_ratings]
    if len(small):
        log.warning("dataset.min_ratings=%d leaves out %d of the %d users (%s ratings)",
                    min_ratings, len(small), len(counts), f"{int(small.sum()):,}")
    return ratings[~ratings["user"].isin(small.index)]


def split_users(ratings: pd.DataFrame, fractions: Sequence[float], seed: int,
                min_ratings: int) -> dict[str, list[int]]:
    """The users of meta-train / meta-val / meta-test, disjoint, shuffled by `seed` and cut by
    `fractions`; an empty split refused in one line."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise UserError(f"dataset.split_fractions={list(fractions)} must be three numbers > 0")
    users = pd.Series(ratings["user"].unique())
    try:
        return assign_splits(users, None, "user", fractions, seed)
    except UserError as error:  # a split left empty: too few users
        raise UserError(f"{error}: {len(users)} users have dataset.min_ratings={min_ratings} "
                        f"ratings, too few for dataset.split_fractions={list(fractions)}; lower "
                        "min_ratings or use a larger release") from None


def grouped_ratings(ratings: pd.DataFrame, users: list[int],
                    within: Sequence[str] = ()) -> tuple[pd.DataFrame, Tensor]:
    """The ratings of `users`, user by user (in that order; within a user sorted by the columns
    `within`, else in file order), with each user's place in `users` (`group`), and the users'
    offsets [users + 1]."""
    rows = ratings[ratings["user"].isin(users)]
    rows = rows.assign(group=rows["user"].map({user: i for i, user in enumerate(users)}))
    rows = rows.sort_values(["group", *within], kind="stable")
    counts = rows["group"].value_counts().reindex(range(len(users))).to_numpy()
    return rows, torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))


def standardized(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(values - mean) / deviation of the meta-train `train` values (deviation 1 if constant)."""
    mean, std = train.mean(), train.std()
    return (values - mean) / (std if std > 0 else 1.0)


class Encoder:
    """A rating row's inputs: its movie's content, its user's demographics and, with
    `embedding_dim`, its movie's MF bias and factors, in that order; statistics from the
    meta-train ratings only (see the module docstring).

    Args:
        data: the release.
        train: the meta-train ratings, with each row's movie index (`item`) and the index of its
            user among the meta-train users (`group`).
        embedding_dim, seed: of the movie embedding (0: none).
    """

    def __init__(self, data: MovieLens, train: pd.DataFrame, embedding_dim: int, seed: int):
        self.content, self.names = self.movie_content(data.movies, train["item"].to_numpy())
        self.users, self.demographics = None, None
        if data.users is not None:
            self.users = data.users.index
            self.demographics, names = self.user_demographics(data, train["user"].to_numpy())
            self.names += names
        self.embedding = None
        if embedding_dim:
            self.embedding = self.movie_embedding(train, len(data.movies), embedding_dim, seed)
            self.names += ["mf_bias"] + [f"mf_factor_{i}" for i in range(embedding_dim)]

    @staticmethod
    def movie_content(movies: pd.DataFrame, train_items: np.ndarray) -> tuple[np.ndarray, list]:
        """[movies, features]: the genres and the year, standardised on the meta-train ratings'
        movies, a missing year given the meta-train mean (0 once standardised)."""
        years = movies["year"].to_numpy(np.float64)
        train_years = years[train_items]
        known = train_years[np.isfinite(train_years)]
        if len(known) == 0:
            raise UserError("no movie a meta-train user rated has a year in the movies file")
        missing = ~np.isfinite(years)
        if missing.any():
            log.info("%s of the %s movies have no year: given the meta-train ratings' mean year "
                     "(%.1f)", f"{int(missing.sum()):,}", f"{len(years):,}", known.mean())
        year = np.where(missing, 0.0, standardized(years, known))
        genres = movies.drop(columns="year")
        content = np.column_stack([genres.to_numpy(np.float64), year]).astype(np.float32)
        return content, [*genres.columns, "year"]

    @staticmethod
    def user_demographics(data: MovieLens, train_users: np.ndarray) -> tuple[np.ndarray, list]:
        """[users, features]: categorical columns one-hot (levels: every value in the users
        file, sorted), numeric ones standardised on the meta-train ratings' users."""
        parts, names = [], []
        train_rows = data.users.index.get_indexer(train_users)
        for column in data.users.columns:
            values = data.users[column]
            if column in data.categorical:
                levels = sorted(values.unique())
                parts.append(np.stack([(values == level).to_numpy(np.float64)
                                       for level in levels], axis=1))
                names += [f"{column}={level}" for level in levels]
            else:
                numbers = values.to_numpy(np.float64)
                parts.append(standardized(numbers, numbers[train_rows])[:, None])
                names.append(column)
        return np.concatenate(parts, axis=1).astype(np.float32), names

    @staticmethod
    def movie_embedding(train: pd.DataFrame, movies: int, dim: int, seed: int) -> np.ndarray:
        """[movies, 1 + dim]: each movie's bias and factors from a biased MF of the meta-train
        ratings; zeros for a movie no meta-train user rated."""
        model = fit_biased_mf(train["group"].to_numpy(), train["item"].to_numpy(),
                              train["rating"].to_numpy(), int(train["group"].max()) + 1,
                              movies, dim=dim, seed=seed)
        log.info("dataset.movie_embedding=%d: MF fitted on the %s meta-train ratings; %s of the "
                 "%s movies have none and get zeros", dim, f"{len(train):,}",
                 f"{movies - train['item'].nunique():,}", f"{movies:,}")
        return np.column_stack([model.item_bias, model.item_factors]).astype(np.float32)

    def __call__(self, rows: pd.DataFrame) -> Tensor:
        """[rows, features] float32 of rating rows (user ids and movie indices `item`)."""
        items = rows["item"].to_numpy()
        parts = [self.content[items]]
        if self.demographics is not None:
            parts.append(self.demographics[self.users.get_indexer(rows["user"])])
        if self.embedding is not None:
            parts.append(self.embedding[items])
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))


class MovieLensRatings(GroupedRegression):
    """One regression task per user, on the rating; see the module docstring. `ndcg_at`: the k
    of the nDCG@k reported per episode; `movie_ids`: the movie id of each item index."""

    def __init__(self, splits: dict[str, GroupedRows], feature_names: Sequence[str],
                 target_offset: float, target_scale: float, ndcg_at: Sequence[int],
                 movie_ids: np.ndarray):
        super().__init__(splits, feature_names, target_offset, target_scale)
        self.ndcg_at, self.movie_ids = tuple(ndcg_at), movie_ids

    def episode_metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """MAE and RMSE in stars, and nDCG@k of the query movies ranked by the predicted
        rating with the true rating (in stars) as relevance."""
        ratings = targets.flatten(1).float() * self.scale + self.offset
        scores = predictions.flatten(1).float()
        return super().episode_metrics(predictions, targets) | {
            f"ndcg@{k}": ndcg_at_k(scores, ratings, k).float() for k in self.ndcg_at}


class MovieLensLiked(RowsByGroup, TaskFamily):
    """One 2-way task per user: liked (label 1, a rating of at least the threshold) or not
    (label 0), K support and Q query ratings of each label, labels fixed (not permuted: label 1
    is always liked). Each split's rows are user by user, a user's not-liked ratings before its
    liked ones; `rows(split).targets` holds the labels."""

    task_type = "classification"
    output_dim = None

    def __init__(self, splits: dict[str, GroupedRows], feature_names: Sequence[str],
                 ndcg_at: Sequence[int], movie_ids: np.ndarray, threshold: float):
        self.splits, self.names_of_features = splits, tuple(feature_names)
        self.ndcg_at, self.movie_ids, self.threshold = tuple(ndcg_at), movie_ids, threshold
        self.label_counts = {}  # [users, 2]: each user's ratings of label 0 and of label 1
        for split, rows in splits.items():
            liked = torch.zeros(rows.num_groups, dtype=torch.long).index_add_(
                0, rows.group_of_rows(), rows.targets[:, 0].long())
            self.label_counts[split] = torch.stack([rows.counts - liked, liked], 1)
        # the users each split draws from: all until check_fits sees the task shape
        self.drawn = {split: torch.arange(rows.num_groups) for split, rows in splits.items()}

    def num_classes(self, split: str) -> int:
        """Liked and not: what a classifier pre-trained on the ratings tells apart."""
        return 2

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """Tasks are 2-way; only users with K + Q ratings of each label give tasks (how many
        each split leaves out is said once, a split left with none refused)."""
        for key, ways in (("n_way", episode.n_way), ("train_n_way", episode.train_n_way)):
            if ways is not None and ways != 2:
                raise UserError(f"episode.{key}={ways}: {name}'s tasks are 2-way, liked (a "
                                f"rating >= dataset.liked_threshold={self.threshold:g}) or not; "
                                f"set episode.{key}=2")
        needed = episode.k_shot + max(episode.query_size, episode.train_query_size or 0)
        what = "episode.k_shot + episode.query_size" + (
            " (train_query_size)" if (episode.train_query_size or 0) > episode.query_size else "")
        for split, counts in self.label_counts.items():
            fewer = counts.min(1).values  # each user's ratings of its rarer label
            fits = torch.nonzero(fewer >= needed).flatten()
            if len(fits) == 0:
                raise UserError(f"{what} = {needed} ratings of each label (liked and not) is "
                                f"more than any meta-{split} user of {name} has (the most is "
                                f"{int(fewer.max())}); use at most that many together, or "
                                "another dataset.liked_threshold")
            if len(fits) < len(fewer):
                log.warning("%s: %d of the %d meta-%s users have fewer than %s = %d liked or "
                            "not liked ratings and give no tasks", name, len(fewer) - len(fits),
                            len(fewer), split, what, needed)
            self.drawn[split] = fits

    def sample(self, split: str, shape: TaskShape, batch_size: int,
               generator: torch.Generator) -> TaskBatch:
        """K + Q distinct ratings of each label from each task's user, support and query
        shuffled so that order says nothing about the label."""
        rows, drawn, counts = self.splits[split], self.drawn[split], self.label_counts[split]
        _, k_shot, query_size = shape
        users = drawn[torch.randint(len(drawn), (batch_size,), generator=generator)]
        count = counts[users]  # [B, 2]
        start = torch.stack([rows.offsets[users], rows.offsets[users] + count[:, 0]], 1)
        most = int(count.max())
        order = torch.rand(batch_size, 2, most, generator=generator)
        order.masked_fill_(torch.arange(most) >= count.unsqueeze(-1), 2.0)  # past the label
        picked = start.unsqueeze(-1) + order.topk(k_shot + query_size, dim=2,
                                                  largest=False).indices  # [B, 2, K + Q]
        labels = torch.arange(2).view(1, 2, 1).expand_as(picked)
        batch = torch.arange(batch_size).unsqueeze(1)

        def part(columns: slice, size: int) -> tuple[Tensor, Tensor]:
            shuffle = torch.rand(batch_size, 2 * size, generator=generator).argsort(dim=1)
            part_rows = picked[:, :, columns].reshape(batch_size, -1)[batch, shuffle]
            return (gather(rows.features, part_rows),
                    labels[:, :, columns].reshape(batch_size, -1)[batch, shuffle])

        support_x, support_y = part(slice(0, k_shot), k_shot)
        query_x, query_y = part(slice(k_shot, None), query_size)
        # classes: each task's user, so that the evaluation counts the distinct test users
        return TaskBatch(support_x, support_y, query_x, query_y, users.unsqueeze(1))

    def episode_metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """nDCG@k of the query movies ranked by the liked score (the logit of label 1 less that
        of label 0), relevance 1 for a liked movie."""
        scores = (predictions[..., 1] - predictions[..., 0]).flatten(1).float()
        liked = targets.flatten(1).float()
        return {f"ndcg@{k}": ndcg_at_k(scores, liked, k).float() for k in self.ndcg_at}

    def num_examples(self, split: str) -> int:
        return int(self.splits[split].offsets[-1])

    def labelled_examples(self, split: str, rows: Tensor,
                          generator: torch.Generator) -> ExampleBatch:
        """The ratings at `rows` with their labels (liked or not)."""
        data = self.splits[split]
        return ExampleBatch(gather(data.features, rows), data.targets[rows, 0].long())


def movielens(root: str, format: str | None = None, min_ratings: int = 20,
              split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
              movie_embedding: int = 0, ndcg_at: Sequence[int] = (1, 3)) -> MovieLensRatings:
    """The cold-start rating tasks of the MovieLens release at `root` (`dataset=movielens`); see
    the module docstring."""
    return movielens_tasks("rating", root, format, min_ratings, split_fractions, split_seed,
                           movie_embedding, ndcg_at)


def movielens_liked(root: str, format: str | None = None, liked_threshold: float = 4.0,
                    min_ratings: int = 20, split_fractions: Sequence[float] = (0.64, 0.16, 0.20),
                    split_seed: int = 0, movie_embedding: int = 0,
                    ndcg_at: Sequence[int] = (1, 3)) -> MovieLensLiked:
    """The cold-start liked-or-not tasks of the MovieLens release at `root`
    (`dataset=movielens_liked`): a rating of at least `liked_threshold` is liked."""
    return movielens_tasks("liked", root, format, min_ratings, split_fractions, split_seed,
                           movie_embedding, ndcg_at, liked_threshold)


def movielens_tasks(target: str, root: str, format: str | None, min_ratings: int,
                    split_fractions: Sequence[float], split_seed: int, movie_embedding: int,
                    ndcg_at: Sequence[int], liked_threshold: float = 4.0,
                    ) -> MovieLensRatings | MovieLensLiked:
    """`target` "rating" (regression) or "liked" (2-way classification) tasks."""
    check_whole_number("dataset.min_ratings", min_ratings)
    check_whole_number("dataset.movie_embedding", movie_embedding, minimum=0)
    check_finite_number("dataset.liked_threshold", liked_threshold)
    if isinstance(ndcg_at, (str, int)) or not isinstance(ndcg_at, Sequence):
        raise UserError(f"dataset.ndcg_at={ndcg_at!r} must be a list of whole numbers, e.g. "
                        "[1, 3]")
    for k in ndcg_at:
        check_whole_number("dataset.ndcg_at", k)
    data = read_movielens(root, format)
    check_known(data)
    log.info("MovieLens %s at %s: %s ratings by %s users of %s movies", data.format, root,
             f"{len(data.ratings):,}", f"{data.ratings['user'].nunique():,}",
             f"{len(data.movies):,}")
    ratings = kept_users(data.ratings, min_ratings)
    parts = split_users(ratings, split_fractions, split_seed, min_ratings)
    ratings = ratings.assign(item=data.movies.index.get_indexer(ratings["movie"]),
                             liked=(ratings["rating"] >= liked_threshold).astype(np.int64))
    within = ["liked"] if target == "liked" else []  # a user's not-liked ratings, then liked
    grouped = {split: grouped_ratings(ratings, users, within) for split, users in parts.items()}
    train = grouped["train"][0]
    encode = Encoder(data, train, movie_embedding, split_seed)
    log.info("users: %s", ", ".join(f"{len(users)} meta-{split}" for split, users in
                                    parts.items()))
    offset, scale = 0.0, 1.0
    if target == "rating":
        offset, scale = float(train["rating"].mean()), float(train["rating"].std(ddof=0)) or 1.0
    splits = {}
    for split, (rows, offsets) in grouped.items():
        values = rows["liked" if target == "liked" else "rating"].to_numpy(np.float64)
        splits[split] = GroupedRows(
            encode(rows), torch.from_numpy(((values - offset) / scale)[:, None].astype(np.float32)),
            offsets, tuple(map(str, parts[split])), torch.from_numpy(rows["item"].to_numpy()))
    movie_ids = data.movies.index.to_numpy()
    if target == "liked":
        return MovieLensLiked(splits, encode.names, ndcg_at, movie_ids, liked_threshold)
    return MovieLensRatings(splits, encode.names, offset, scale, ndcg_at, movie_ids)
