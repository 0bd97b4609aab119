"""The P1 data pipeline's speed: img/s of the training DataLoader (decode-once cache + the seed augmentations)."""
import time
from pathlib import Path

from hw1.data.demo import make_cls_demo
from hw1.tasks import get_task
from hw1.trainer import make_loader

DATA_BATCH = get_task("cls").config.batch_size  # train_cls.py's default batch


def p1_train_folder(data_dir, workdir):
    """(folder, source): the real P1 training images, else generated digits written under ``workdir``."""
    layout = get_task("cls").layout
    folder = Path(data_dir) / layout.train
    if folder.is_dir():
        return folder, "real"
    return make_cls_demo(workdir, layout) / layout.train, "generated"


def _forever(loader):
    while True:
        yield from loader


def loader_img_s(dataset, *, batch_size, workers, batches, device):
    """img/s of the training DataLoader over ``batches`` batches after its first (worker start-up excluded)."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, workers=workers, device=device,
                         drop_last=len(dataset) > batch_size)
    stream = _forever(loader)
    start = time.perf_counter()
    first = next(stream)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return {"img_s": batches * len(first[0]) / seconds, "first_batch_s": first_s}


def bench_data(dataset, *, workers, batches, device):
    return {str(w): loader_img_s(dataset, batch_size=DATA_BATCH, workers=w, batches=batches, device=device)
            for w in workers}
