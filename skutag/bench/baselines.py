"""The plain PyTorch loop skutag is measured against.

What a team would write first: torchvision's PIL loader + Resize/CenterCrop/ToTensor/
Normalize in a DataLoader, and the eager model under `torch.inference_mode()`. Bad
files are not its problem here: it is timed on good images only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from skutag.card import ModelCard
from skutag.listing import local_path, walk_images


def image_files(root: str | os.PathLike) -> list[Path]:
    """The image files under `root` as every stage lists them (`skutag.listing.walk_images`), sorted.

    Broken symlinks (no size) are left out: the plain loop has no error rows.
    """
    return [Path(os.fsdecode(local_path(e.uri))) for e in walk_images(root) if e.size is not None]


def plain_torch_loop(
    model,
    card: ModelCard,
    images: str | os.PathLike,
    *,
    batch_size: int,
    device: str = "cpu",
    workers: int | None = None,
) -> float:
    """images/s of the eager loop over every image file under `images`."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader

    transform = transforms.Compose(
        [
            transforms.Resize(card.resize_size),
            transforms.CenterCrop(card.image_size),
            transforms.ToTensor(),
            transforms.Normalize(card.mean, card.std),
        ]
    )
    files = image_files(images)

    class Files(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, index: int):
            return transform(default_loader(str(files[index])))

    workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    loader = DataLoader(Files(), batch_size=batch_size, num_workers=workers, pin_memory=device == "cuda")
    model = model.to(device).eval()
    seen = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            model(batch.to(device, non_blocking=True))
            seen += len(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)
