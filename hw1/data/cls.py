"""P1 data: the course's ``{label}_{id}.png`` folders (or any names plus a ``filename,label`` CSV).

Every image is decoded once per run into one uint8 tensor (22,500 x 3 x 32 x 32 is 69 MB), so
an epoch never touches a PNG again; the per-sample augmentations run on those uint8 tensors.
"""
import csv
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from hw1.data.images import IMG_EXTS, MEAN, STD, list_images, read_rgb  # noqa: F401 (re-exported)
from hw1.errors import UserError

IMG_SIZE = 32
NUM_CLASSES = 50


def label_from_name(path):
    """Class of a course file name ``{label}_{id}.png``."""
    from hw1.data.seg import MASK_SUFFIX, SAT_SUFFIX

    name = Path(path).name
    head = name.split("_", 1)[0]
    if not re.fullmatch(r"[0-9]+", head):
        raise UserError(f"{path}: file name does not start with a class label ('{{label}}_{{id}}.png')")
    if name.endswith((MASK_SUFFIX, SAT_SUFFIX)):  # 0013_mask.png would read as an image of class 13
        raise UserError(f"{path}: a P2 satellite image or mask (xxxx{SAT_SUFFIX}, xxxx{MASK_SUFFIX}), not a P1 "
                        "image named {label}_{id}.png: P2 folders are scored with --task seg")
    return int(head)


def read_labels_csv(path):
    """``{filename: label}`` from a CSV with the header ``filename,label`` (as ``val_gt.csv``).

    UTF-8 with or without a byte-order mark (as spreadsheet programs save it); a file name listed
    twice is an error, since either label could be the intended one. File names are kept exactly as
    written (`` a.png`` is another file than ``a.png``); spaces around a label are allowed.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: label CSV not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected a CSV with the header 'filename,label')")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected a CSV with the header 'filename,label')") from None
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV ({e})".splitlines()[0]) from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise UserError(f"{path}: expected the header 'filename,label'")
    labels, first_line = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        # at most 18 digits: any label that long is outside the classes, and int() of thousands of
        # digits raises (Python's limit on converting long digit strings)
        if len(row) != 2 or not re.fullmatch(r"-?[0-9]{1,18}", row[1].strip()):
            shown = repr(",".join(row))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise UserError(f"{path}: line {line}: expected '<filename>,<integer label>', got {shown}")
        name = row[0]
        if name in first_line:
            raise UserError(f"{path}: line {line}: {name} is listed twice (first on line {first_line[name]})")
        first_line[name] = line
        labels[name] = int(row[1])
    return labels


def decode_images(paths, size=IMG_SIZE, workers=4):
    """(N, 3, size, size) uint8 tensor; PIL releases the GIL while decoding, so threads help."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: read_rgb(p, size), paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class ImageArrayDataset(torch.utils.data.Dataset):
    """In-memory images (N, 3, H, W) uint8 with integer labels; ``transform`` runs per sample."""

    def __init__(self, images, labels, files, transform=None):
        assert len(images) == len(labels) == len(files)
        self.images, self.labels, self.files = images, labels, files
        self.transform = transform

    @property
    def targets(self):
        """The labels as a tensor: what :class:`hw1.data.batches.BatchStream` indexes beside the images."""
        return self.labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def load_cls_split(folder, *, labels_csv=None, size=IMG_SIZE, transform=None):
    """Decode a folder once. Labels come from ``labels_csv`` when given, else from the file names.

    Every label must be one of the ``NUM_CLASSES`` classes.
    """
    files = list_images(folder)
    if labels_csv is not None:
        table = read_labels_csv(labels_csv)
        missing = [p.name for p in files if p.name not in table]
        if missing:
            raise UserError(f"{labels_csv}: no label for {len(missing)} image(s) of {folder}, e.g. {missing[0]}")
        labels = [table[p.name] for p in files]
    else:
        labels = [label_from_name(p) for p in files]
    # Caught here, a bad label names its file; in the loss it would be an index error mid-epoch.
    for p, label in zip(files, labels):
        if not 0 <= label < NUM_CLASSES:
            source = f"{labels_csv}: label of {p.name}" if labels_csv is not None else f"{p}: label"
            raise UserError(f"{source} {label} is outside 0..{NUM_CLASSES - 1}")
    images = decode_images(files, size)
    return ImageArrayDataset(images, torch.tensor(labels), [p.name for p in files], transform)


AUGMENTATIONS = ("seed", "light", "none")


def cls_train_transform(aug="seed"):
    """Training transform, all torchvision.

    ``seed``: the seed recipe, random crop + flip, AutoAugment (CIFAR-10 policy), then RandomErasing;
    ``light``: crop + flip only (for tiny data sets and short runs); ``none``: normalisation only.
    """
    from torchvision.transforms import v2  # here, not at the top: hw1.predict needs no transform

    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {aug!r}")
    ops = []
    if aug in ("seed", "light"):
        ops += [v2.RandomCrop(IMG_SIZE, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()]
    if aug == "seed":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if aug == "seed":
        ops.append(v2.RandomErasing())
    return v2.Compose(ops)


def cls_eval_transform():
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
