"""stamcli's benchmark suite: ``python -m benchmarks [--quick] [--only SECTION ...] [--out DIR]``.

Every section measures on the current machine and compares side by side in the same run (see
:mod:`benchmarks.run`); ``bench_finetune.py`` measures fine-tuning on its own.
"""
