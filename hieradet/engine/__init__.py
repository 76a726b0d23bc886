"""Training and evaluation loop for the LazyConfigs in ``configs/`` (used by
``tools/lazyconfig_train_net.py`` and the demo)."""

from .datasets import check_datasets, config_dataset_names, register_json_dataset
from .fed_loss import FedLossClassWeights
from .train_loop import check_evaluator, do_test, do_train

__all__ = [
    "FedLossClassWeights",
    "check_datasets",
    "check_evaluator",
    "config_dataset_names",
    "do_test",
    "do_train",
    "register_json_dataset",
]
