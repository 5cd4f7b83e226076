"""meta_learning.py: a flag-style front end over the config train.py composes.

Each flag sets a config key, `--set KEY=VALUE` passes any Hydra override through, and the run is
`metalearn.run.training.train`, as with train.py: the same arguments give the same results.json.
A user's own algorithm or dataset is found as train.py finds it, through
`--set hydra.searchpath=[file://DIR]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from metalearn.cli import run_cli
from metalearn.errors import UserError, check_positive_number, check_whole_number
from metalearn.paths import CONFIG_DIR
from metalearn.run.compose import (
    ALGORITHM_ALIASES,
    algorithm_name,
    apply_settings,
    compose_config,
    config_choices,
    override_keys,
    setting_keys,
)

# flag destination -> the config's setting name
FLAG_SETTINGS = {
    "way": "n_way", "shots": "k_shot", "query": "query_size", "inner_steps": "inner_steps",
    "inner_lr": "inner_lr", "outer_lr": "outer_lr", "meta_batch_size": "meta_batch_size",
    "first_order": "first_order", "epochs": "num_epochs", "seed": "seed",
}


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad argument in one line (argparse adds the whole usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def whole_number(minimum: int):
    """An argparse type: a whole number >= minimum (the check the config and the API make)."""
    def parse(text: str) -> int:
        try:
            return check_whole_number("value", int(text), minimum)
        except (ValueError, UserError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number >= {minimum}") from None
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        return check_positive_number("value", float(text))
    except (ValueError, UserError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0") from None


def algorithm_summary(name: str) -> str:
    """The first line of the algorithm config's header comment, without its file pointer; for a
    user's own algorithm (found through hydra.searchpath), where it comes from."""
    path = CONFIG_DIR / "algorithm" / f"{name}.yaml"
    if not path.is_file():
        return "(your own, from hydra.searchpath)"
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").split(": metalearn/")[0]
    return ""


def set_overrides(argv: Sequence[str] | None) -> list[str]:
    """The --set overrides alone, read before the full parser is built: a
    `--set hydra.searchpath=[file://DIR]` among them adds the user's algorithms and datasets to
    the choices of --algorithm and --dataset."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--set", action="append", default=[])
    return parser.parse_known_args(argv)[0].set


def build_parser(overrides: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with the algorithms and datasets that the config search path of `overrides`
    (the --set overrides) holds."""
    algorithms = config_choices("algorithm", overrides)
    listing = "\n".join(f"  {name:<13} {algorithm_summary(name)}" for name in algorithms)
    aliases = "\n".join(f"  {alias:<13} = {name}" for alias, name in ALGORITHM_ALIASES.items())
    parser = OneLineParser(
        prog="meta_learning.py",
        description="Meta-train one algorithm, validate it, then test it on the meta-test classes "
                    "and write results.json. The flags map onto the config train.py composes; "
                    "--set passes any other key.",
        epilog=f"algorithms:\n{listing}\n{aliases}\n\nexamples:\n"
               "  python meta_learning.py --algorithm maml --shots 5 --tasks 1000 --inner-steps 5\n"
               "  python meta_learning.py --algorithm prototypical --shots 1 --way 5 --query 15\n"
               "  python meta_learning.py --algorithm maml --set dataset.split=lake --set "
               "trainer=gpu\n"
               "  python meta_learning.py --algorithm mine --set "
               "'hydra.searchpath=[file:///path/to/my/configs]'   # your own algorithm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--algorithm", default="protonet", metavar="NAME",
                        choices=algorithms + list(ALGORITHM_ALIASES),
                        help="one of the algorithms below (default: protonet)")
    parser.add_argument("--dataset", default="omniglot",
                        choices=config_choices("dataset", overrides),
                        help="task family (default: omniglot)")
    parser.add_argument("--way", type=whole_number(1), help="classes per task (episode.n_way)")
    parser.add_argument("--shots", type=whole_number(1),
                        help="support examples per class (episode.k_shot)")
    parser.add_argument("--query", type=whole_number(1),
                        help="query examples per class (episode.query_size)")
    parser.add_argument("--tasks", type=whole_number(1),
                        help="meta-training tasks in all, spread evenly over the epochs (--epochs, "
                             "1 when --tasks is given alone), in whole meta-batches (rounded up, "
                             "with a warning); default: the config's episode.num_tasks per epoch")
    parser.add_argument("--epochs", type=whole_number(1),
                        help="epochs, each followed by validation and a checkpoint (num_epochs)")
    parser.add_argument("--inner-steps", type=whole_number(1),
                        help="inner adaptation steps in meta-training (algorithm.inner_steps)")
    parser.add_argument("--inner-lr", type=positive_number, help="algorithm.inner_lr")
    parser.add_argument("--outer-lr", type=positive_number, help="algorithm.outer_lr")
    parser.add_argument("--meta-batch-size", type=whole_number(1),
                        help="tasks per outer update (episode.meta_batch_size)")
    parser.add_argument("--first-order", action="store_true", default=None,
                        help="drop second-order terms (algorithm.first_order=true)")
    parser.add_argument("--seed", type=whole_number(0), help="seed of the run (default: 42)")
    parser.add_argument("--output-dir", type=Path,
                        help="run directory (default: outputs/runs/<algorithm>_<dataset>/<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any Hydra override, such as dataset.split=lake or trainer=gpu; "
                             "repeatable")
    return parser


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    settings = {FLAG_SETTINGS[flag]: value for flag, value in vars(args).items()
                if flag in FLAG_SETTINGS and value is not None}
    if args.tasks is not None:
        epochs = args.epochs or 1
        if args.tasks % epochs:
            parser.error(f"--tasks {args.tasks} is not a multiple of --epochs {epochs}")
        settings.update(num_tasks=args.tasks // epochs, num_epochs=epochs)
    return settings


def check_set_overrides(overrides: Sequence[str], settings: dict[str, Any],
                        keys: dict[str, str]) -> None:
    """--set must not change what a flag chooses: the algorithm and dataset (their own flags),
    or a key a given flag sets."""
    flag_of = {name: flag for flag, name in FLAG_SETTINGS.items()}
    set_by_flags = {keys[name]: f"--{flag_of.get(name, 'tasks').replace('_', '-')}"
                    for name in settings if name in keys}
    for override, key in zip(overrides, override_keys(overrides)):
        if key.lstrip("+~") in ("algorithm", "dataset"):
            raise UserError(f"--set {override}: choose the {key.lstrip('+~')} with "
                            f"--{key.lstrip('+~')}")
        if key.lstrip("+~") in set_by_flags:
            raise UserError(f"--set {override} and {set_by_flags[key.lstrip('+~')]} both set "
                            f"{key.lstrip('+~')}; give it once")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    algorithm = algorithm_name(args.algorithm, args.set)
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        raise UserError(f"--output-dir {args.output_dir} is a file; name a directory")
    cfg = compose_config([f"algorithm={algorithm}", f"dataset={args.dataset}", *args.set],
                         args.output_dir)
    settings = settings_from(args, parser)
    known = setting_keys(cfg)
    for flag, name in FLAG_SETTINGS.items():
        if name in settings and name not in known:
            raise UserError(f"--{flag.replace('_', '-')} does not apply to {algorithm} "
                            f"(it has no {name} setting)")
    check_set_overrides(args.set, settings, known)
    apply_settings(cfg, settings)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(output_dir / "train.log")])
    # imported here, once the flags are checked: it loads torch and Lightning
    from metalearn.run.training import train

    return train(cfg)


def main(argv: Sequence[str] | None = None) -> dict:
    return run_cli(parse_and_run, argv)


def parse_and_run(argv: Sequence[str] | None) -> dict:
    parser = build_parser(set_overrides(argv))
    return run(parser.parse_args(argv), parser)
