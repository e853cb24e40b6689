"""Data: where it comes from (sources), how it is read (idx, and the formats registered by
scheme: formats), what it is (dataset; the known sets are trainlab.catalog), and how it is
served to the model (loader)."""

from trainlab.catalog import CATALOG, DatasetInfo, get_info
from trainlab.data import cifar, folder, hf  # noqa: F401  (they register folder:, cifar10:, cifar100:, hf:)
from trainlab.data.dataset import (
                                    Dataset,
                                    data_matches,
                                    data_options,
                                    fingerprint_changes,
                                    from_arrays,
                                    measure_mean_std,
)
from trainlab.data.formats import load_dataset, register_format
from trainlab.data.loader import DeviceLoader, derive_seed, stratified_split

__all__ = ["CATALOG", "DatasetInfo", "get_info", "Dataset", "from_arrays", "load_dataset", "register_format",
           "measure_mean_std", "data_matches", "fingerprint_changes", "data_options", "DeviceLoader", "derive_seed", "stratified_split"]
