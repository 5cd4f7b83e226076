"""Few-shot text classification on WordNet definitions (dataset=wordnet): the numbers of
experiments/results/text.md.

Every row is scored on the same 600 fixed 5-way test episodes of its split (eval_seed 0), at 1
and 5 shots, with the 95% interval over episodes:
- references without meta-training: TF-IDF of the words (idf fitted on the meta-train
  definitions) and WordLlama's frozen mean embedding, each with nearest centroid (cosine);
- meta-learners trained on 5-way 1-shot tasks for a CPU budget (callbacks=cpu_time_limit, one
  thread each, `--jobs` at once), then tested by eval.py at 1 and 5 shots; ProtoNet's rows also
  report the transfer gain over the same encoder randomly initialised (eval.transfer_gain);
- the encoders side by side under ProtoNet, masked, which picks the trainable encoder of the
  main table (`--encoder`);
- throughput: texts per second through each encoder, and the WordNet corpus's tokenisation and
  cache load time.
    python experiments/text_benchmark.py [--minutes 2] [--jobs 2] [--encoder text_cnn]
        [--sections refs,encoders,main,cross,speed] [--rows earlier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from scipy import sparse
from sklearn.feature_extraction.text import TfidfTransformer

from metalearn.evaluation.statistics import mean_and_ci95
from metalearn.paths import project_root
from metalearn.run.build import instantiate_dataset
from metalearn.run.compose import compose_config

ROOT = Path(project_root())
SHOTS = (1, 5)
TEST = ["episode.test_episodes=600", "episode.val_episodes=100"]
MASKING = {"masked": "dataset.mask_class_words=true", "unmasked": "dataset.mask_class_words=false"}
SPLITS = {"random": "dataset.split=random", "lexicographer": "dataset.split=lexicographer"}
ENCODERS = {
    "bag_of_embeddings": ["backbone=bag_of_embeddings"],
    "text_cnn": ["backbone=text_cnn"],
    "text_transformer": ["backbone=text_transformer"],
    # frozen, ProtoNet has nothing to meta-train: the references score it untrained
    "wordllama (fine-tuned)": ["backbone=wordllama", "backbone.freeze=false"],
}
PRETRAINED = "wordllama (fine-tuned)"
ALGORITHMS = ("protonet", "matchingnet", "anil", "rfs")
SPECIAL_TOKENS = 3  # [PAD], [UNK], [MASK] of the word vocabulary: no TF-IDF feature


# References: nearest centroid on fixed features -------------------------------------------------
def test_episodes(overrides: list[str], k_shot: int, work: str):
    """The task family and the fixed test episodes eval.py scores (same eval_seed and shape)."""
    cfg = compose_config(["dataset=wordnet", *overrides, *TEST, f"episode.k_shot={k_shot}"],
                         f"{work}/episodes")
    tasks = instantiate_dataset(cfg)
    datamodule = instantiate(cfg.episode, tasks=tasks, training_stream=None)
    return tasks, datamodule.test_dataloader()


def nearest_centroid(features, loader) -> tuple[float, float]:
    """Accuracy (mean, 95% half-width over episodes) of the nearest class centroid by cosine
    similarity, on `features(token ids) -> [n, D]`."""
    scores = []
    for batch in loader:
        for task in batch.tasks():
            support = torch.nn.functional.normalize(features(task.support_x), dim=1)
            query = torch.nn.functional.normalize(features(task.query_x), dim=1)
            classes = int(task.support_y.max()) + 1
            centroids = torch.stack([support[task.support_y == c].mean(0)
                                     for c in range(classes)])
            predicted = (query @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
            scores.append((predicted == task.query_y).double().mean())
    return mean_and_ci95(torch.stack(scores))


def counts(ids: torch.Tensor, vocab_size: int) -> sparse.csr_matrix:
    """Word counts [texts, vocabulary] of token ids, special tokens left out."""
    rows = torch.arange(len(ids)).unsqueeze(1).expand_as(ids)
    keep = ids >= SPECIAL_TOKENS
    return sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep].numpy(), ids[keep].numpy())),
                             shape=(len(ids), vocab_size))


def tfidf_features(tasks):
    """TF-IDF of the words of a text, with idf fitted on the meta-train definitions."""
    vocab_size = tasks.tokenizer.vocab_size
    train_ids = torch.as_tensor(np.asarray(tasks.splits["train"].examples)).long()
    transformer = TfidfTransformer().fit(counts(train_ids, vocab_size))
    return lambda ids: torch.from_numpy(
        transformer.transform(counts(ids, vocab_size)).toarray()).float()


def wordllama_features():
    from metalearn.data.tokenizers import WordLlamaTokenizer
    from metalearn.models.pretrained_text import WordLlamaEncoder

    encoder = WordLlamaEncoder((64,), WordLlamaTokenizer(), freeze=True).eval()
    return lambda ids: encoder(ids).detach()


def references(work: str) -> list[dict]:
    rows = []
    for split, split_key in SPLITS.items():
        for masking, mask_key in MASKING.items():
            if split == "lexicographer" and masking == "unmasked":
                continue
            for name, backbone in (("TF-IDF", "backbone=bag_of_embeddings"),
                                   ("WordLlama frozen", "backbone=wordllama")):
                row = {"section": "references", "name": name, "split": split,
                       "masking": masking}
                for shot in SHOTS:
                    tasks, loader = test_episodes([split_key, mask_key, backbone], shot, work)
                    features = tfidf_features(tasks) if name == "TF-IDF" else \
                        wordllama_features()
                    with torch.no_grad():
                        row[f"{shot}-shot"] = nearest_centroid(features, loader)
                print(row, flush=True)
                rows.append(row)
    return rows


# Meta-training runs ----------------------------------------------------------------------------
def run_job(name: str, train_overrides: list[str], eval_overrides: list[str], minutes: float,
            work: str) -> dict:
    """train.py on 5-way 1-shot tasks for `minutes` of CPU time, then eval.py at each shot."""
    run_dir = Path(work) / "runs" / name.replace(" ", "_").replace("(", "").replace(")", "")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    train = [sys.executable, str(ROOT / "train.py"), "dataset=wordnet", *train_overrides, *TEST,
             "callbacks=cpu_time_limit", f"callbacks.cpu_time_limit.minutes={minutes}",
             "num_epochs=1000", "eval_frequency=200", "test_ckpt=best",
             f"hydra.run.dir={run_dir}"]
    started = time.process_time()
    subprocess.run(train, check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    best = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    checkpoint = best[-1] if best else checkpoint
    evaluate = [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={checkpoint}",
                f"eval.shots=[{','.join(map(str, SHOTS))}]", *eval_overrides,
                f"hydra.run.dir={run_dir}/eval"]
    subprocess.run(evaluate, check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    result = json.loads((run_dir / "eval" / "results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    row = {"name": name, "train": " ".join(train_overrides), "steps": trained.get("train_steps"),
           "cpu_minutes": minutes}
    for record in result.get("by_shot", [result]):
        shot = record["k_shot"]
        row[f"{shot}-shot"] = (record["test_acc"], record["test_acc_ci95"])
        if "transfer_gain" in record:
            row[f"{shot}-shot gain"] = (record["transfer_gain"]["gain"],
                                        record["transfer_gain"]["gain_ci95"])
    print(row, f"({time.process_time() - started:.0f} s here)", flush=True)
    return row


def jobs_of(sections: list[str], encoder: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(section, name, train overrides, eval overrides) of every run asked for."""
    jobs = []
    if "encoders" in sections:
        for name, backbone in ENCODERS.items():
            jobs.append(("encoders", f"protonet {name}", ["algorithm=protonet", *backbone,
                                                          MASKING["masked"]], []))
    if "main" in sections:
        for masking, mask_key in MASKING.items():
            for algorithm in ALGORITHMS:
                for encoder_name in (encoder, PRETRAINED):
                    gain = ["eval.transfer_gain=true"] if algorithm == "protonet" else []
                    jobs.append(("main", f"{algorithm} {encoder_name} {masking}",
                                 [f"algorithm={algorithm}", *ENCODERS[encoder_name], mask_key],
                                 gain))
    if "cross" in sections:
        for encoder_name in (encoder, PRETRAINED):
            jobs.append(("cross", f"protonet {encoder_name} lexicographer",
                         ["algorithm=protonet", *ENCODERS[encoder_name], MASKING["masked"],
                          SPLITS["lexicographer"]], []))
    return jobs


# Throughput ------------------------------------------------------------------------------------
def throughput(work: str) -> list[dict]:
    """Texts per second through each encoder (an eval-mode forward pass over 5-way 1+15-shot
    episodes' texts, one thread), and the corpus's tokenisation and cached load time."""
    torch.set_num_threads(1)
    rows = []
    data_dir = f"{work}/speed_data"
    for backbone in ("bag_of_embeddings", "wordllama"):
        overrides = [f"backbone={backbone}", f"paths.data_dir={data_dir}"]
        for state in ("built", "cached"):
            started = time.perf_counter()
            tasks, loader = test_episodes(overrides, 1, work)
            rows.append({"section": "speed", "name": f"tokenise ({backbone} tokenizer, {state})",
                         "seconds": time.perf_counter() - started})
    for name, backbone in ENCODERS.items():
        cfg = compose_config(["dataset=wordnet", *backbone, f"paths.data_dir={data_dir}"],
                             f"{work}/speed")
        tasks = instantiate_dataset(cfg)
        encoder = instantiate(cfg.backbone, input_shape=tasks.input_shape,
                              tokenizer=tasks.tokenizer).eval()
        ids = torch.as_tensor(np.asarray(tasks.splits["test"].examples[:80 * 25])).long()
        ids = ids[:, :int((ids != 0).sum(1).max())]
        with torch.no_grad():
            encoder(ids[:80])
            started = time.perf_counter()
            for batch in ids.split(80):
                encoder(batch)
            elapsed = time.perf_counter() - started
        rows.append({"section": "speed", "name": f"encode ({name})",
                     "texts_per_second": len(ids) / elapsed})
        print(rows[-1], flush=True)
    return rows


# The report ------------------------------------------------------------------------------------
def cell(value) -> str:
    if value is None:
        return ""
    mean, ci = value
    return f"{100 * mean:.2f}% +- {100 * ci:.2f}%"


def report(rows: list[dict], minutes: float) -> str:
    lines = ["# Few-shot text classification on WordNet definitions",
             "", "Written by `python experiments/text_benchmark.py` (see its docstring); "
             f"meta-learners trained {minutes} CPU minutes each (one thread), on 5-way 1-shot "
             "tasks, tested on the same 600 5-way test episodes per split and shot (95% CI over "
             "episodes).", ""]
    for section, title in (("references", "References (no meta-training)"),
                           ("encoders", "Encoders under ProtoNet (masked, random split)"),
                           ("main", "Meta-learners (random split)"),
                           ("cross", "Cross-domain split (lexicographer files, masked)")):
        chosen = [row for row in rows if row.get("section") == section]
        if not chosen:
            continue
        lines += [f"## {title}", "", "| row | 1-shot | 5-shot | transfer gain 1-shot | "
                  "steps |", "|---|---|---|---|---|"]
        for row in chosen:
            name = row["name"] + (f" ({row['split']}, {row['masking']})" if "split" in row
                                  else "")
            lines.append(f"| {name} | {cell(row.get('1-shot'))} | {cell(row.get('5-shot'))} | "
                         f"{cell(row.get('1-shot gain'))} | {row.get('steps', '')} |")
        lines.append("")
    speed = [row for row in rows if row.get("section") == "speed"]
    if speed:
        lines += ["## Throughput (one thread)", "", "| what | value |", "|---|---|"]
        for row in speed:
            value = (f"{row['texts_per_second']:,.0f} texts/s" if "texts_per_second" in row
                     else f"{row['seconds']:.1f} s")
            lines.append(f"| {row['name']} | {value} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="CPU minutes per training")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--encoder", default="text_cnn",
                        help="the trainable encoder of the main table (a name of ENCODERS)")
    parser.add_argument("--sections", default="refs,encoders,main,cross,speed")
    parser.add_argument("--out", default=str(ROOT / "experiments/results/text.md"))
    parser.add_argument("--rows", help="the .json of an earlier run whose rows to report too "
                                       "(sections run apart)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    rows: list[dict] = json.loads(Path(args.rows).read_text()) if args.rows else []
    with tempfile.TemporaryDirectory() as work:
        if "refs" in sections:
            rows += references(work)
        jobs = jobs_of(sections, args.encoder)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [(section, pool.submit(run_job, name, train, evaluate, args.minutes,
                                             work)) for section, name, train, evaluate in jobs]
            rows += [dict(future.result(), section=section) for section, future in futures]
        if "speed" in sections:
            rows += throughput(work)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    Path(args.out).write_text(report(rows, args.minutes))
    print(report(rows, args.minutes))


if __name__ == "__main__":
    main()
