"""The five few-shot image benchmarks (mini-ImageNet, tiered-ImageNet, CIFAR-FS, FC100,
CUB-200-2011) read from tiny files written here in exactly their published formats (2-3 images a
class, 8 to 32 pixels): each split holds the classes its split says, no class is in two splits,
the cached pixels are the ones written, missing and malformed files are one-line errors naming
the file (and, when missing, the folder and the URL), and each config builds a data module.
Nothing is downloaded: download=false, or urlretrieve replaced by a local copy."""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metalearn.data import benchmark_files
from metalearn.data.benchmark_files import CIFAR100_URL, ZENODO
from metalearn.data.cifar_fs import SPLIT as CIFAR_FS_SPLIT
from metalearn.data.cifar_fs import CifarFS
from metalearn.data.cub import CUB
from metalearn.data.episodes import TaskBatch
from metalearn.data.fc100 import FC100
from metalearn.data.mini_imagenet import MiniImageNet
from metalearn.data.task_family import SPLITS
from metalearn.data.tiered_imagenet import TieredImageNet
from metalearn.run.build import build
from metalearn.run.training import train
from tests.conftest import make_config
from tests.helpers import user_error

# CIFAR-100's 20 superclasses (coarse labels, in label order) and their 5 classes each
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
# CIFAR-100's fine label names are in alphabetical order
CIFAR100_FINE = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
COARSE_OF = {name: coarse for coarse, names in enumerate(CIFAR100_SUPERCLASSES.values())
             for name in names}
FC100_SUPERCLASSES = {"train": {"fish", "flowers", "food_containers", "fruit_and_vegetables",
                                "household_electrical_devices", "household_furniture",
                                "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
                                "reptiles", "trees", "vehicles_1", "vehicles_2"},
                      "val": {"large_carnivores", "large_omnivores_and_herbivores",
                              "non-insect_invertebrates", "small_mammals"},
                      "test": {"aquatic_mammals", "insects", "medium_mammals", "people"}}
CUB_FOLDER = "CUB_200_2011"


def random_pixels(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jpeg(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Writes a JPEG and returns the pixels it holds (JPEG is lossy: as decoded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG")
    return np.asarray(Image.open(path).convert("RGB"))


def write_pickle(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=2))


def cached(tasks, split: str) -> dict[str, np.ndarray]:
    """class name -> its cached images as uint8 [N, H, W, C]."""
    part = tasks.splits[split]
    offsets = part.offsets.tolist()
    return {name: np.asarray(part.examples[offsets[c]:offsets[c + 1]]).transpose(0, 2, 3, 1)
            for c, name in enumerate(part.names)}


def check_dataset(tasks, written: dict[str, dict[str, np.ndarray]]) -> None:
    """Each split holds exactly the written classes, in order, with the written pixels; no class
    is in two splits."""
    seen: set[str] = set()
    for split in SPLITS:
        images = cached(tasks, split)
        assert list(images) == list(written[split]), split
        assert not seen & set(images), f"a class of {split} is in another split"
        seen |= set(images)
        for name, pixels in written[split].items():
            assert images[name].dtype == np.uint8
            np.testing.assert_array_equal(images[name], pixels, err_msg=f"{split} {name}")



@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails at once, as on a machine without internet."""
    def refuse(url, *args, **kwargs):
        raise OSError(f"no network for {url}")
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


# fixtures in the published formats

SPLIT_CLASSES = {"train": 3, "val": 2, "test": 2}


def write_mini_pickles(root: Path, rng: np.random.Generator, size: int = 8,
                       val_name: str = "mini-imagenet-cache-val.pkl") -> dict:
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, classes in SPLIT_CLASSES.items():
        images = random_pixels(rng, 3 * classes, size)
        rows = rng.permutation(len(images)).reshape(classes, 3)  # a class's rows are scattered
        names = [f"n0{split}{c:05d}" for c in range(classes)]
        written[split] = {name: images[class_rows] for name, class_rows in zip(names, rows)}
        name = val_name if split == "val" else f"mini-imagenet-cache-{split}.pkl"
        write_pickle(root / name, {"image_data": images, "class_dict": {
            name: class_rows.tolist() for name, class_rows in zip(names, rows)}})
    return written


def write_mini_csvs(root: Path, rng: np.random.Generator, size: int = 8) -> dict:
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, classes in SPLIT_CLASSES.items():
        lines, written[split] = ["filename,label"], {}
        for c in range(classes):
            label = f"n0{split}{c:05d}"
            files = [f"{label}{i:08d}.jpg" for i in range(1, 4)]
            written[split][label] = np.stack([
                write_jpeg(root / "images" / file, pixels)
                for file, pixels in zip(files, random_pixels(rng, 3, size))])
            lines += [f"{file},{label}" for file in files]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return written


def write_tiered(root: Path, rng: np.random.Generator, size: int = 8,
                 names: bool = True) -> dict:
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, classes in SPLIT_CLASSES.items():
        labels = rng.permutation(np.repeat(np.arange(classes), 3))
        images = random_pixels(rng, len(labels), size)
        encoded: list = [png_bytes(image) for image in images]
        encoded[0] = np.frombuffer(encoded[0], dtype=np.uint8)  # as in the authors' release
        class_names = [f"n0{split}{c:05d}" for c in range(classes)]
        written[split] = {(class_names[c] if names else f"{split} class {c}"): images[labels == c]
                          for c in range(classes)}
        write_pickle(root / f"{split}_images_png.pkl", encoded)
        label_file = {"label_specific": labels, "label_general": labels // 2}
        if names:
            label_file["label_specific_str"] = class_names
        write_pickle(root / f"{split}_labels.pkl", label_file)
    return written


def write_cifar100(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """cifar-100-python/{train,test,meta}: 2 train and 1 test image of each of the 100 classes;
    returns class name -> its images, train's then test's."""
    folder = root / "cifar-100-python"
    by_class: dict[str, list[np.ndarray]] = {name: [] for name in CIFAR100_FINE}
    for part, per_class in (("train", 2), ("test", 1)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        images = random_pixels(rng, len(fine), 32)
        for label, image in zip(fine, images):
            by_class[CIFAR100_FINE[label]].append(image)
        write_pickle(folder / part, {
            b"filenames": [f"{i}.png".encode() for i in range(len(fine))],
            b"batch_label": part.encode(), b"fine_labels": fine.tolist(),
            b"coarse_labels": [COARSE_OF[CIFAR100_FINE[label]] for label in fine],
            b"data": images.transpose(0, 3, 1, 2).reshape(len(fine), 3072)})
    write_pickle(folder / "meta", {b"fine_label_names": [name.encode() for name in CIFAR100_FINE],
                                   b"coarse_label_names": [name.encode() for name in
                                                           CIFAR100_SUPERCLASSES]})
    return {name: np.stack(images) for name, images in by_class.items()}


def write_cifar_fs_release(root: Path, rng: np.random.Generator, size: int = 8) -> dict:
    """cifar100/data/<class>/*.png and cifar100/splits/bertinetto/*.txt, the classes of a split
    written in shuffled order."""
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, names in CIFAR_FS_SPLIT.items():
        order = [names[i] for i in rng.permutation(len(names))]
        written[split] = {}
        for name in order:
            images = random_pixels(rng, 2, size)
            for i, image in enumerate(images):
                path = root / "cifar100" / "data" / name / f"{name}_s_{i:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
            written[split][name] = images
        splits = root / "cifar100" / "splits" / "bertinetto"
        splits.mkdir(parents=True, exist_ok=True)
        (splits / f"{split}.txt").write_text("\n".join(order) + "\n")
    return written


def write_fc100_pickles(root: Path, rng: np.random.Generator, size: int = 8) -> dict:
    written: dict[str, dict[str, np.ndarray]] = {}
    first = {"train": 10, "val": 40, "test": 70}
    for split, classes in SPLIT_CLASSES.items():
        labels = rng.permutation(np.repeat(np.arange(first[split], first[split] + classes), 3))
        images = random_pixels(rng, len(labels), size)
        written[split] = {f"label {label}": images[labels == label] for label in sorted(set(labels))}
        write_pickle(root / f"FC100_{split}.pickle", {"data": images, "labels": labels.tolist()})
    return written


def write_cub(folder: Path, rng: np.random.Generator, size: int = 8) -> dict:
    """A CUB_200_2011 folder of 200 classes of 2 JPEGs; image ids run over the classes in turn."""
    names = [f"{c:03d}.Bird_{c}" for c in range(1, 201)]
    images, labels, by_class = [], [], {name: [] for name in names}
    image_id = 0
    for turn in range(2):
        for class_id, name in enumerate(names, start=1):
            image_id += 1
            relative = f"{name}/Bird_{class_id}_{turn:04d}_{image_id}.jpg"
            by_class[name].append(write_jpeg(folder / "images" / relative,
                                             random_pixels(rng, 1, size)[0]))
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text(
        "\n".join(f"{i} {name}" for i, name in enumerate(names, start=1)) + "\n")
    return {split: {name: np.stack(by_class[name]) for i, name in enumerate(names)
                    if rule(i)} for split, rule in (("train", lambda i: i % 2 == 0),
                                                    ("val", lambda i: i % 4 == 1),
                                                    ("test", lambda i: i % 4 == 3))}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# mini-ImageNet

@pytest.mark.parametrize("val_name", ["mini-imagenet-cache-val.pkl",
                                      "mini-imagenet-cache-validation.pkl"])
def test_mini_imagenet_pickles(val_name, tmp_path, rng):
    written = write_mini_pickles(tmp_path / "mini", rng, val_name=val_name)
    tasks = MiniImageNet(str(tmp_path / "mini"), str(tmp_path / "data"), image_size=8,
                         download=False)
    check_dataset(tasks, written)
    assert (tmp_path / "data" / "mini_imagenet" / "cache" / "8px_3ch" / "index.json").is_file()


def test_mini_imagenet_images_and_csv_files(tmp_path, rng):
    written = write_mini_csvs(tmp_path / "mini", rng)
    check_dataset(MiniImageNet(str(tmp_path / "mini"), str(tmp_path), image_size=8,
                               download=False), written)


def test_mini_imagenet_missing_pickle(tmp_path, rng, no_network):
    message = user_error(lambda: MiniImageNet(str(tmp_path / "mini"), str(tmp_path),
                                              download=False))
    assert "mini-imagenet-cache-train.pkl" in message and str(tmp_path / "mini") in message
    assert f"{ZENODO}/mini-imagenet-cache-train.pkl" in message
    assert "dataset.download=true" in message
    write_mini_pickles(tmp_path / "mini", rng)
    (tmp_path / "mini" / "mini-imagenet-cache-test.pkl").unlink()
    message = user_error(lambda: MiniImageNet(str(tmp_path / "mini"), str(tmp_path),
                                              download=True))
    assert "mini-imagenet-cache-test.pkl" in message
    assert f"downloading {ZENODO}/mini-imagenet-cache-test.pkl failed (no network" in message


def test_mini_imagenet_downloads_a_missing_pickle(tmp_path, rng, monkeypatch):
    """download=true fetches the pickle (under its published name) through atomic_write."""
    source = tmp_path / "elsewhere"
    written = write_mini_pickles(source, rng, val_name="mini-imagenet-cache-validation.pkl")
    root = tmp_path / "mini"
    root.mkdir()
    (source / "mini-imagenet-cache-train.pkl").rename(root / "mini-imagenet-cache-train.pkl")
    fetched = []

    def copy(url, target, reporthook=None):
        fetched.append(url)
        assert Path(target).name.endswith(".part")  # written beside the file, then renamed
        Path(target).write_bytes((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlretrieve", copy)
    tasks = MiniImageNet(str(root), str(tmp_path), image_size=8, download=True)
    check_dataset(tasks, written)
    assert fetched == [f"{ZENODO}/mini-imagenet-cache-validation.pkl",
                       f"{ZENODO}/mini-imagenet-cache-test.pkl"]
    assert sorted(path.name for path in root.iterdir()) == [
        "mini-imagenet-cache-test.pkl", "mini-imagenet-cache-train.pkl",
        "mini-imagenet-cache-validation.pkl"]


def test_mini_imagenet_files_not_in_the_format(tmp_path, rng):
    root = tmp_path / "mini"
    write_mini_pickles(root, rng)
    write_pickle(root / "mini-imagenet-cache-val.pkl", {"image_data": np.zeros((1, 8, 8, 3),
                                                                               np.uint8)})
    message = user_error(lambda: MiniImageNet(str(root), str(tmp_path), image_size=8,
                                              download=False))
    assert str(root / "mini-imagenet-cache-val.pkl") in message and "class_dict" in message
    (root / "mini-imagenet-cache-val.pkl").write_bytes(b"not a pickle")
    message = user_error(lambda: MiniImageNet(str(root), str(tmp_path), image_size=8,
                                              download=False))
    assert str(root / "mini-imagenet-cache-val.pkl") in message

    csv_root = tmp_path / "csv"
    write_mini_csvs(csv_root, rng)
    (csv_root / "val.csv").write_text("name,class\nx.jpg,n1\n")
    message = user_error(lambda: MiniImageNet(str(csv_root), str(tmp_path), image_size=8,
                                              download=False))
    assert str(csv_root / "val.csv") in message and "filename,label" in message
    (csv_root / "val.csv").write_text("filename,label\nn0missing.jpg,n0val\n")
    message = user_error(lambda: MiniImageNet(str(csv_root), str(tmp_path), image_size=8,
                                              download=False))
    assert str(csv_root / "val.csv") in message and "no image" in message
    (csv_root / "test.csv").unlink()
    message = user_error(lambda: MiniImageNet(str(csv_root), str(tmp_path), image_size=8,
                                              download=False))
    assert "test.csv" in message and "twitter/meta-learning-lstm" in message


# tiered-ImageNet

@pytest.mark.parametrize("names", [True, False])
def test_tiered_imagenet(names, tmp_path, rng, monkeypatch):
    written = write_tiered(tmp_path / "tiered", rng, names=names)
    tasks = TieredImageNet(str(tmp_path / "tiered"), str(tmp_path), image_size=8)
    check_dataset(tasks, written)
    # later runs map the cache and read no pickle
    monkeypatch.setattr("metalearn.data.tiered_imagenet.read_pickle",
                        lambda *args: pytest.fail("a pickle was read again"))
    check_dataset(TieredImageNet(str(tmp_path / "tiered"), str(tmp_path), image_size=8), written)


def test_tiered_imagenet_missing_and_malformed_files(tmp_path, rng, no_network):
    root = tmp_path / "tiered"
    message = user_error(lambda: TieredImageNet(str(root), str(tmp_path)))
    assert "train_images_png.pkl" in message and str(root) in message
    assert f"{ZENODO}/tiered-imagenet-train_images_png.pkl" in message and "12 GB" in message
    write_tiered(root, rng)
    (root / "test_labels.pkl").unlink()
    message = user_error(lambda: TieredImageNet(str(root), str(tmp_path), download=True))
    assert "test_labels.pkl" in message and "failed (no network" in message
    write_pickle(root / "test_labels.pkl", {"label_general": [0, 1]})
    message = user_error(lambda: TieredImageNet(str(root), str(tmp_path), image_size=8))
    assert str(root / "test_labels.pkl") in message and "label_specific" in message


# CIFAR-FS

def test_cifar_fs_split_is_bertinetto_s_of_cifar100():
    names = [name for split in CIFAR_FS_SPLIT.values() for name in split]
    assert [len(CIFAR_FS_SPLIT[split]) for split in SPLITS] == [64, 16, 20]
    assert len(set(names)) == 100 and set(names) == set(CIFAR100_FINE)


def test_cifar_fs_from_the_authors_release(tmp_path, rng):
    written = write_cifar_fs_release(tmp_path / "cifar_fs", rng)
    check_dataset(CifarFS(str(tmp_path / "cifar_fs"), str(tmp_path), image_size=8, download=False),
                          written)


def test_cifar_fs_from_cifar100(tmp_path, rng):
    images = write_cifar100(tmp_path / "cifar_fs", rng)
    tasks = CifarFS(str(tmp_path / "cifar_fs"), str(tmp_path), download=False)
    assert [tasks.num_classes(split) for split in SPLITS] == [64, 16, 20]
    check_dataset(tasks, {split: {name: images[name] for name in names}
                          for split, names in CIFAR_FS_SPLIT.items()})


def test_cifar_fs_unpacks_an_archive_in_root(tmp_path, rng, monkeypatch):
    """cifar-100-python.tar.gz lying in root is unpacked; the authors' cifar100.zip is
    downloaded (here: copied) and unpacked when download=true."""
    images = write_cifar100(tmp_path / "source", rng)
    root = tmp_path / "tar"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "source" / "cifar-100-python", "cifar-100-python")
    tasks = CifarFS(str(root), str(tmp_path / "data_tar"), download=False)
    assert tasks.splits["test"].names == CIFAR_FS_SPLIT["test"]
    np.testing.assert_array_equal(cached(tasks, "val")["otter"], images["otter"])

    written = write_cifar_fs_release(tmp_path / "release", rng)
    zipped = tmp_path / "cifar100.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted((tmp_path / "release").rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "release"))
    monkeypatch.setattr(urllib.request, "urlretrieve",
                        lambda url, target, reporthook=None: Path(target).write_bytes(
                            zipped.read_bytes()))
    root = tmp_path / "zip"
    check_dataset(CifarFS(str(root), str(tmp_path / "data_zip"), image_size=8, download=True),
                  written)
    assert sorted(path.name for path in root.iterdir()) == ["cifar100"]  # the download removed


def test_cifar_fs_missing_and_malformed_files(tmp_path, rng):
    root = tmp_path / "cifar_fs"
    message = user_error(lambda: CifarFS(str(root), str(tmp_path), download=False))
    assert "cifar100/" in message and "cifar-100-python/" in message and str(root) in message
    assert f"{ZENODO}/cifar100.zip" in message and CIFAR100_URL in message
    write_cifar_fs_release(root, rng)
    split_file = root / "cifar100" / "splits" / "bertinetto" / "val.txt"
    split_file.write_text(split_file.read_text() + "unicorn\n")
    message = user_error(lambda: CifarFS(str(root), str(tmp_path), image_size=8, download=False))
    assert str(split_file) in message and "'unicorn'" in message
    split_file.unlink()
    message = user_error(lambda: CifarFS(str(root), str(tmp_path), image_size=8, download=False))
    assert "val.txt" in message and f"{ZENODO}/cifar100.zip" in message

    other = tmp_path / "other"
    write_cifar100(other, rng)
    write_pickle(other / "cifar-100-python" / "meta", {b"coarse_label_names": []})
    message = user_error(lambda: CifarFS(str(other), str(tmp_path), download=False))
    assert str(other / "cifar-100-python" / "meta") in message
    (other / "cifar-100-python" / "train").unlink()
    message = user_error(lambda: CifarFS(str(other), str(tmp_path), download=False))
    assert "no train in" in message and CIFAR100_URL in message


# FC100

def test_fc100_pickles(tmp_path, rng):
    written = write_fc100_pickles(tmp_path / "fc100", rng)
    check_dataset(FC100(str(tmp_path / "fc100"), str(tmp_path), image_size=8, download=False),
                        written)


def test_fc100_from_cifar100_by_superclass(tmp_path, rng):
    images = write_cifar100(tmp_path / "fc100", rng)
    tasks = FC100(str(tmp_path / "fc100"), str(tmp_path), download=False)
    assert [tasks.num_classes(split) for split in SPLITS] == [60, 20, 20]
    expected = {split: {name: images[name] for name in CIFAR100_FINE
                        if any(name in CIFAR100_SUPERCLASSES[superclass]
                               for superclass in FC100_SUPERCLASSES[split])}
                for split in SPLITS}
    check_dataset(tasks, expected)


def test_fc100_missing_and_malformed_files(tmp_path, rng, no_network):
    root = tmp_path / "fc100"
    message = user_error(lambda: FC100(str(root), str(tmp_path), download=False))
    assert "FC100_train.pickle" in message and str(root) in message
    assert f"{ZENODO}/fc100.zip" in message and CIFAR100_URL in message
    write_fc100_pickles(root, rng)
    (root / "FC100_val.pickle").unlink()
    message = user_error(lambda: FC100(str(root), str(tmp_path), download=True))
    assert "FC100_val.pickle" in message and f"downloading {ZENODO}/fc100.zip failed" in message
    write_pickle(root / "FC100_val.pickle", {"data": np.zeros((2, 8, 8, 3), np.uint8)})
    message = user_error(lambda: FC100(str(root), str(tmp_path), image_size=8, download=False))
    assert str(root / "FC100_val.pickle") in message and "'labels'" in message


# CUB-200-2011

@pytest.mark.parametrize("root_is_parent", [False, True])
def test_cub_chen_split(root_is_parent, tmp_path, rng):
    written = write_cub(tmp_path / CUB_FOLDER, rng)
    assert [len(written[split]) for split in SPLITS] == [100, 50, 50]
    root = tmp_path if root_is_parent else tmp_path / CUB_FOLDER
    tasks = CUB(str(root), str(tmp_path / "data"), image_size=8, download=False)
    check_dataset(tasks, written)
    assert tasks.splits["train"].names[:2] == ("001.Bird_1", "003.Bird_3")
    assert tasks.splits["val"].names[:2] == ("002.Bird_2", "006.Bird_6")
    assert tasks.splits["test"].names[:2] == ("004.Bird_4", "008.Bird_8")


def test_cub_missing_and_malformed_files(tmp_path, rng):
    message = user_error(lambda: CUB(str(tmp_path / "birds"), str(tmp_path), download=False))
    assert "images.txt" in message and str(tmp_path / "birds") in message
    assert "CUB_200_2011.tgz" in message and "data.caltech.edu" in message
    folder = tmp_path / CUB_FOLDER
    write_cub(folder, rng)
    (folder / "image_class_labels.txt").unlink()
    message = user_error(lambda: CUB(str(folder), str(tmp_path), image_size=8, download=False))
    assert "image_class_labels.txt" in message and str(folder) in message
    (folder / "image_class_labels.txt").write_text("1 1\n2 x\n")
    message = user_error(lambda: CUB(str(folder), str(tmp_path), image_size=8, download=False))
    assert str(folder / "image_class_labels.txt") in message and "line 2" in message


def test_settings_are_checked(tmp_path):
    message = user_error(lambda: CUB(str(tmp_path), str(tmp_path), normalize=[[0.5], [0.5]],
                                     download=False))
    assert message.startswith("dataset.normalize=")
    message = user_error(lambda: FC100(str(tmp_path), str(tmp_path), channels=2, download=False))
    assert message.startswith("dataset.channels=2")
    assert benchmark_files.url_name(f"{ZENODO}/cifar100.zip") == "cifar100.zip"


# the configs

CONFIG_FIXTURES = {
    "mini_imagenet": lambda root, rng: write_mini_pickles(root, rng),
    "tiered_imagenet": lambda root, rng: write_tiered(root, rng),
    "cifar_fs": lambda root, rng: write_cifar100(root, rng),
    "fc100": lambda root, rng: write_cifar100(root, rng),
    "cub": lambda root, rng: write_cub(root, rng),
}


@pytest.mark.parametrize("name", list(CONFIG_FIXTURES))
def test_config_builds(name, tmp_path, rng):
    root = tmp_path / name
    CONFIG_FIXTURES[name](root, rng)
    cfg = make_config([f"dataset={name}", f"dataset.root={root}", f"paths.data_dir={tmp_path}",
                       "dataset.download=false", "episode.n_way=2", "episode.k_shot=1",
                       "episode.query_size=1", "episode.train_n_way=2",
                       "episode.train_query_size=1"], tmp_path)
    datamodule, _ = build(cfg)
    batch = datamodule.train_dataloader().dataset[0]
    size = cfg.dataset.image_size
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape[-3:] == (3, size, size)
    assert batch.query_x.shape[-3:] == (3, size, size)
    assert batch.support_x.min() < 0  # the config's normalize applied to pixels in [0, 1]
    assert (tmp_path / name / "cache" / f"{size}px_3ch").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIG_FIXTURES))
def test_each_benchmark_meta_trains_from_one_override(name, tmp_path, rng):
    """`dataset=<name>` with its files in root: a (two-step) run that trains, validates on the
    meta-val classes and tests on the meta-test classes."""
    root = tmp_path / name
    CONFIG_FIXTURES[name](root, rng)
    record = train(make_config([f"dataset={name}", f"dataset.root={root}",
                                f"paths.data_dir={tmp_path}", "dataset.download=false",
                                "dataset.image_size=16", "backbone.hidden_channels=4",
                                "episode.n_way=2", "episode.k_shot=1", "episode.query_size=1",
                                "episode.train_n_way=2", "episode.train_query_size=1",
                                "episode.num_tasks=2", "num_epochs=1", "episode.val_episodes=2",
                                "episode.test_episodes=3"], tmp_path / "run"))
    assert (record["dataset"], record["train_steps"], record["test_episodes"]) == (name, 2, 3)
    assert (tmp_path / "run" / "results.json").is_file()
