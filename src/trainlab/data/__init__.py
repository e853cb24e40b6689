"""Data: where it comes from (sources), how it is read (idx), what it is (catalog, dataset),
and how it is served to the model (loader)."""

from .catalog import CATALOG, DatasetInfo, get_info
from .dataset import Dataset, from_arrays, load_dataset, measure_mean_std
from .loader import DeviceLoader, derive_seed, stratified_split

__all__ = ["CATALOG", "DatasetInfo", "get_info", "Dataset", "from_arrays", "load_dataset",
           "measure_mean_std", "DeviceLoader", "derive_seed", "stratified_split"]
