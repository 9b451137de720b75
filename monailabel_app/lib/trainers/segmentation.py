"""Train the light segmentation decoder on frozen patch features from the datastore's label maps (tag final)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.segdata import SegmentationData

from .base import OrthoTrainTask, say


class SegmentationTrainer(OrthoTrainTask):
    def __init__(self, runtime: Any, values: tuple[int, ...], task: str = "segmentation") -> None:
        super().__init__(runtime, task, "Train the light segmentation decoder on your label maps (tag final)",
                         {"epochs": 60, "min_images": 3, "hidden": 64, "seed": 0})
        self.values = values

    def fit(self, request: dict, datastore: Any, out: Path) -> dict:
        from orthofm.segment import DecoderConfig, save_decoder, train_decoder

        data = SegmentationData(self.runtime, self.values)
        examples, n_images = data.all_examples(datastore)
        need = int(request.get("min_images", 3))
        if n_images < need:
            raise ValueError(f"need at least {need} label maps under tag 'final' to train the decoder; have "
                             f"{n_images} (few-shot kNN propagation is used until then)")
        epochs = int(request.get("epochs", 60))
        say(f"{n_images} label maps, {len(examples)} planes; training {epochs} epochs")
        cfg = DecoderConfig(embed_dim=int(examples[0].features.shape[-1]), values=self.values,
                            hidden=int(request.get("hidden", 64)), epochs=epochs, seed=int(request.get("seed", 0)))

        def progress(epoch: int, loss: float) -> None:
            if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
                say(f"epoch {epoch}/{epochs} loss {loss:.4f}")

        model, metrics = train_decoder([(e.features, e.canvas_index, e.canvas_valid) for e in examples], cfg,
                                       progress=progress)
        save_decoder(model, out)
        return {"n_images": n_images, "n_planes": len(examples), "metrics": metrics}
