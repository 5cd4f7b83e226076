"""Meta-train with flags instead of Hydra overrides (same config, same code as train.py):

    python meta_learning.py --algorithm maml --shots 5 --tasks 1000 --inner-steps 5
    python meta_learning.py --algorithm prototypical --shots 1 --way 5 --query 15
"""

from metalearn.cli.flags import main
from metalearn.run.allocator import tune_malloc

if __name__ == "__main__":
    tune_malloc()  # before anything is built (metalearn/run/allocator.py says why)
    main()
