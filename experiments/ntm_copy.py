"""The NTM paper's copy task (Graves et al. 2014, section 4.1): trains an NTM and an LSTM of
similar size on the same sequences, then reports bit errors per sequence by length.

Training lengths are 1 to `--max-length` (the paper: 20); the table also shows longer sequences,
which test generalisation as the paper's figure 4 does.
    python experiments/ntm_copy.py [--steps 4000] [--max-length 20] [--out FILE]
Each run appends its table to FILE (experiments/results/ntm_copy.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from copy_task import LSTMBaseline, bit_errors_by_length, train_copy

from metalearn.models.ntm import NTMNetwork
from metalearn.paths import project_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="batches of 16 sequences")
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--memory-slots", type=int, default=128)
    parser.add_argument("--memory-width", type=int, default=20)
    parser.add_argument("--controller-size", type=int, default=100)
    parser.add_argument("--lstm-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=f"{project_root()}/experiments/results/ntm_copy.md")
    args = parser.parse_args()

    torch.manual_seed(0)
    models = {
        "NTM": NTMNetwork(9, 8, memory_slots=args.memory_slots, memory_width=args.memory_width,
                   controller_size=args.controller_size),
        "LSTM": LSTMBaseline(9, 8, hidden_size=args.lstm_size),
    }
    lengths = sorted({1, 5, 10, args.max_length, 2 * args.max_length})
    lines = [f"Copy task: {args.steps} steps of 16 sequences, lengths 1-{args.max_length}, "
             f"Adam {args.lr}; NTM with a {args.memory_slots} x {args.memory_width} memory and a "
             f"{args.controller_size}-unit LSTM controller, LSTM of {args.lstm_size} units; bit "
             "errors per sequence (of 8 x length bits) on 100 fresh sequences per length.", "",
             "| model | parameters | train time | " + " | ".join(f"length {n}" for n in lengths)
             + " |", "|---|---|---|" + "---|" * len(lengths)]
    for name, model in models.items():
        started = time.time()
        train_copy(model, args.steps, 1, args.max_length, lr=args.lr)
        errors = bit_errors_by_length(model, lengths)
        parameters = sum(p.numel() for p in model.parameters())
        lines.append(f"| {name} | {parameters:,} | {time.time() - started:.0f} s | "
                     + " | ".join(f"{errors[n]:.2f}" for n in lengths) + " |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with Path(args.out).open("a") as table:  # each run adds its table
        table.write("\n" + "\n".join(lines) + "\n")
    print(f"Table: {args.out}")


if __name__ == "__main__":
    main()
