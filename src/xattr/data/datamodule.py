"""A LightningDataModule that feeds one :class:`Sample` at a time to the evaluation loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, Subset

from xattr.data.sample import Sample, SampleError


class _Tolerant(Dataset):
    """Wraps a dataset so a broken sample comes back as its SampleError instead of raising."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample | SampleError:
        try:
            return self.dataset[index]
        except SampleError as exc:
            return exc


def collate_single(batch: list[Sample | SampleError]) -> Sample | SampleError:
    """Batch size is 1: return the one Sample (or SampleError) untouched, no tensors."""
    if len(batch) != 1:
        raise ValueError(f"collate_single expects batch_size=1, got {len(batch)}")
    return batch[0]


class XattrDataModule(L.LightningDataModule):
    """Serves a dataset of Samples for testing: batch size 1, broken samples as SampleError values.

    ``dataset`` is a ``Dataset`` or a Hydra config with ``_target_`` (instantiated on
    first use). ``limit`` keeps the first ``limit`` samples.
    """

    def __init__(
        self, dataset: Dataset | Mapping[str, Any], limit: int | None = None, num_workers: int = 0
    ) -> None:
        super().__init__()
        self._dataset = dataset
        self.limit = limit
        self.num_workers = num_workers

    @property
    def dataset(self) -> Dataset:
        """The wrapped dataset, instantiating a Hydra config the first time it is needed."""
        if not isinstance(self._dataset, Dataset):
            from hydra.utils import instantiate

            self._dataset = instantiate(self._dataset)
        return self._dataset

    def test_dataloader(self) -> DataLoader:
        """Samples in dataset order, one per step, SampleErrors passed through as values."""
        ds: Dataset = self.dataset
        if self.limit is not None:
            ds = Subset(ds, range(min(self.limit, len(ds))))  # type: ignore[arg-type]
        return DataLoader(
            _Tolerant(ds),
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_single,
        )

    predict_dataloader = test_dataloader
