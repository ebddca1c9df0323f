"""Evaluate attribution methods on one model and one dataset, training-free.

python train_free_eval.py                                   # embedded default
python train_free_eval.py method=[glimpse,tmme] data.limit=20 logger=wandb
python train_free_eval.py -m experiment=glimpse_ablation    # the paper's Table 3

The thin script of the repository: the entry point is `xattr.eval.main` (installed as
``xattr-eval``), which reads the configs in conf/ (shipped in the package as xattr/conf).
"""

from xattr.eval import main

if __name__ == "__main__":
    main()
