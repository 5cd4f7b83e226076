"""What the debug= presets (configs/debug/) need beyond Lightning's Trainer flags."""

from __future__ import annotations

from torch.utils.data import DataLoader

from metalearn.data.datamodule import EpisodicDataModule


class OneBatchDataModule(EpisodicDataModule):
    """The data module of debug=overfit: every epoch is one meta-training step on the same
    meta-batch, the first of the run's stream. (Lightning's overfit_batches alone would not repeat
    it: the EpochSampler moves on to fresh tasks every epoch.)"""

    def train_dataloader(self) -> DataLoader:
        first_batch = super().train_dataloader().dataset[0]
        return DataLoader([first_batch], batch_size=None)
