"""Where every stage input and output lives under one root: the file contract between the stages,
`dvc.yaml` and the Kubeflow components (nothing heavy imported here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths of every stage output under one root (the repo for `dvc repro`, a work dir elsewhere)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def validation_report(self) -> Path:
        return self.root / "reports" / "validation.json"

    @property
    def promotion_report(self) -> Path:
        return self.root / "reports" / "promotion.json"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name
