"""Meta-train with flags instead of Hydra overrides (same config, same code as train.py):

    python meta_learning.py --algorithm maml --shots 5 --tasks 1000 --inner-steps 5
    python meta_learning.py --algorithm prototypical --shots 1 --way 5 --query 15
"""

from metalearn.cli.flags import main

if __name__ == "__main__":
    main()
