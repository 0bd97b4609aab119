"""The course's data of each problem as extracted into ``hw1_data/``: folder and file names.

Here, beside the data modules rather than with the tasks, because the rule of what a command may
write (:mod:`hw1.outputs`) protects every problem's data, and the tasks' prediction writers use
that rule: a problem with course data of its own adds its layout to :data:`COURSE`.
"""
from dataclasses import dataclass
from pathlib import Path

from hw1.errors import UserError


@dataclass(frozen=True)
class Layout:
    """The course's files of one problem, as extracted into ``hw1_data/``."""
    folder: str  # under hw1_data/: p1_data
    archive: str  # the course's archive of it: p1_data.tar.gz
    train: str  # the split folders in it
    val: str
    labels: str | None = None  # a filename,label CSV of the validation split beside them (P1)
    image_suffix: str | None = None  # P2's pairs: xxxx_sat.jpg + xxxx_mask.png
    mask_suffix: str | None = None

    @property
    def root(self):
        return f"hw1_data/{self.folder}"

    def require(self, data_dir, splits=None):
        """``data_dir`` holding the split folders (both, or those named), or a one-line error saying
        how to make it."""
        root, splits = Path(data_dir), splits or (self.train, self.val)
        if not all((root / d).is_dir() for d in splits):
            raise UserError(f"{root}: expected {' and '.join(d + '/' for d in splits)} here; extract the course "
                            f"data with 'mkdir -p hw1_data && tar xzf {self.archive} -C hw1_data' or pass --data-dir")
        return root


P1 = Layout(folder="p1_data", archive="p1_data.tar.gz", train="train_50", val="val_50", labels="val_gt.csv")
P2 = Layout(folder="p2_data", archive="p2_data.tar.gz", train="train", val="validation",
            image_suffix="_sat.jpg", mask_suffix="_mask.png")
# every problem's course data: what no command writes over
COURSE = (P1, P2)
