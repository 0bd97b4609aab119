"""The grading API: predictions for a folder of images, written where the grader asks.

    python -m hw1.predict cls IMAGE_DIR OUTPUT_CSV [--checkpoint PATH] [--device cpu] [--tta [MODE] | --no-tta]
    python -m hw1.predict seg IMAGE_DIR OUTPUT_DIR [--checkpoint PATH] [--device cpu] [--tta [MODE] | --no-tta]

``predict_cls`` writes a CSV with the header ``filename,label`` (bare file names, sorted) and
returns its rows. Without a checkpoint each task uses its shipped model, ``checkpoints/p1_densenet.pth``
(P1's model A) and ``checkpoints/p2_vgg16_fcn8s.pth`` (a VGG16-FCN8s).
``predict_seg`` writes one RGB mask in the course's 7 colours per input image, at the input's
size: ``xxxx_sat.jpg`` becomes ``xxxx_mask.png`` (the course's naming, which its evaluator
pairs with the ground truth); any other ``name.jpg`` / ``name.png`` becomes ``name.png``.
"""
import argparse
import csv
import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.cli import run
from hw1.data.cls import IMG_SIZE, decode_images
from hw1.data.images import list_images, normalize, read_rgb, resize_rgb
from hw1.data.seg import MASK_SUFFIX, SAT_SUFFIX
from hw1.engine import probabilities, top_class, tta_mode
from hw1.errors import UserError
from hw1.flags import add_tta_args
from hw1.io import atomic_write_text, staged_folder
from hw1.outputs import MASK_MARK, check_output, check_outputs
from hw1.runtime import amp_dtype, autocast, channels_last_default, get_device
from hw1.tasks import TASKS, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceModel:
    """A model ready to infer, with its plan: ``module`` in eval mode on ``device``, run under
    autocast to ``amp`` (None: full fp32) on inputs in NHWC when ``channels_last``; ``tta`` the
    test-time augmentation (:data:`hw1.engine.TTA_MODES`: none, flip, d4, crops); ``size`` is the side a segmenter was trained at (None: images at their
    own size); ``name`` the model's registry name (None for a model built otherwise)."""
    module: torch.nn.Module
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    tta: str = "none"
    size: int | None = None
    name: str | None = None

    @classmethod
    def from_checkpoint(cls, ckpt, path, device, *, fold=True):
        """The model of a loaded checkpoint, set up to infer the fastest way on ``device``.

        Memory format and autocast dtype are the measured fastest inference configuration of that
        model on this device (``hw1.runtime``); ``tta`` is the checkpoint's own choice of TTA
        (``python -m hw1.checkpoint --tta [MODE]``); ``size`` its run's ``--size``. With ``fold`` each batch
        norm that follows a convolution is folded into it (:func:`hw1.models.fold.fold_batch_norms`)
        when the plan infers in fp32.
        """
        module = model_from_checkpoint(ckpt, path).to(device).eval()
        name = ckpt["model_name"]
        amp = amp_dtype("auto", device, name, use="infer")
        # Folding pays in fp32 (the shipped P2 model 1.2x on 2 EPYC cores, memory-bound batch norms
        # gone) and changes no class there; under bf16 autocast it measured no faster and moved 0.14 %
        # of the P2 pixels to the other side of bf16's rounding, so bf16 inference keeps its batch norms.
        if fold and amp is None:
            from hw1.models import get_spec
            from hw1.models.fold import fold_batch_norms

            side = min(get_spec(name).input_size, 64)  # any input shows the data flow; a small one is quick
            example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
            module, _ = fold_batch_norms(module, example)
        channels_last = channels_last_default(None, name, device, use="infer")
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return cls(module, device, amp, channels_last,
                   tta=tta_mode(ckpt.get("inference", {}).get("tta", False)), size=trained_size(ckpt), name=name)

    @classmethod
    def of(cls, module, device):
        """``module`` (built otherwise, in eval mode on ``device``) with the device's defaults for an
        unknown model: autocast as ``--amp auto``, NHWC inputs, no TTA, images at their own size."""
        return cls(module, device, amp_dtype("auto", device), channels_last=True)

    def with_tta(self, tta):
        """This plan with the TTA asked for (a mode, or True/False), or (None) as it is: the checkpoint's choice."""
        return self if tta is None else replace(self, tta=tta_mode(tta))

    def prepare(self, images):
        """uint8 (N, 3, H, W) -> normalised floats on the model's device, NHWC if ``channels_last``."""
        x = normalize(images.to(self.device))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def trained_size(ckpt):
    """The side a segmentation checkpoint's images were resized to in training (``--size``), or None."""
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    size = args.get("size")
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) and size >= 1 else None


def load_model(checkpoint, task, device):
    """:class:`InferenceModel` of ``checkpoint`` (or the shipped default of ``task``) on ``device``."""
    path = checkpoint or get_task(task).default_checkpoint
    return InferenceModel.from_checkpoint(load_checkpoint(path, task=task), path, device)


@torch.inference_mode()
def classify(model, images, *, batch_size=128, tta=None):
    """Class indices (N,) of uint8 images (N, 3, H, W), in batches, as the :class:`InferenceModel` ``model``
    plans; ``tta`` averages each image's class probabilities over its views (a mode of
    :data:`hw1.engine.TTA_MODES`; None: the plan's choice).

    Batches of 128 keep a DenseNet's concatenated 32x32 feature maps in the CPU's caches: on 2
    cores they classified 766 img/s against 490 in batches of 500.
    """
    model = model.with_tta(tta)
    preds = []
    for batch in images.split(batch_size):
        with autocast(model.device, model.amp):
            preds.append(top_class(probabilities(model.module, model.prepare(batch), tta=model.tta)).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


@torch.inference_mode()
def extract_features(model, images, *, batch_size=500):
    """Penultimate features ``model.module.features(x)`` of uint8 images (N, 3, H, W) as float32 numpy
    (N, D), in batches, on the device and in the memory format of the :class:`InferenceModel` ``model``."""
    # In fp32, not under the model's inference autocast: the features are what the PCA and t-SNE
    # figures show, not a class decision. bf16 moves them by about 0.6 % (the shipped DenseNet on
    # 250 validation images), the explained variance in its third digit and the t-SNE layout with
    # it, and whether autocast runs depends on the CPU (bf16 only where it has bf16 instructions):
    # the figures of one checkpoint would differ from machine to machine.
    out = [model.module.features(model.prepare(batch)).float().cpu() for batch in images.split(batch_size)]
    return torch.cat(out).numpy() if out else torch.empty(0, 0).numpy()


def write_csv(rows, path, header):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def is_utf8(name):
    """False for a file name holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path):
    """``path`` printable in a message: bytes that are not UTF-8 as escapes (``caf\\xe9.png``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def predict_cls(image_dir, output_csv, checkpoint=None, device=None, tta=None, overwrite=False, task="cls"):
    """Classify every .png/.jpg of ``image_dir``; write ``output_csv``; return ``[(filename, label), ...]``.

    ``task``: the task whose checkpoints it takes (and whose shipped model is the default): P1's,
    or another problem's that classifies images as P1 does.

    ``tta``: average each image's class probabilities over its views (:data:`hw1.engine.TTA_MODES`;
    True is flip, the mirror image); None (the default) does what the checkpoint says, which for
    the shipped model A is flip.

    Grayscale, RGBA, palette and non-32x32 images are converted to RGB and resized to 32x32. A
    file name that is not UTF-8 is an error before any image is decoded: the CSV could not hold it.
    """
    device = get_device(device)
    files = list_images(image_dir)
    check_output(output_csv, "csv", inputs=[("IMAGE_DIR", image_dir), ("--checkpoint", checkpoint)],
                 overwrite=overwrite)
    for p in files:
        if not is_utf8(p.name):
            raise UserError(f"{shown(p)}: file name is not UTF-8 text, which the CSV needs to name it; rename the file")
    model = load_model(checkpoint, task, device)
    images = decode_images(files, IMG_SIZE)
    rows = [(p.name, int(c)) for p, c in zip(files, classify(model, images, tta=tta))]
    write_csv(rows, output_csv, ("filename", "label"))
    return rows


def mask_name(image_path):
    """The course's name of an image's mask (``0013_sat.jpg`` -> ``0013_mask.png``), else ``<stem>.png``."""
    stem, sat = Path(image_path).stem, Path(SAT_SUFFIX).stem
    return f"{stem[:-len(sat)]}{MASK_SUFFIX}" if stem.endswith(sat) else f"{stem}.png"


@torch.inference_mode()
def segment_batch(model, images, *, tta=None):
    """(N, H, W) int64 classes of uint8 images (N, 3, H, W) of one size, as the :class:`InferenceModel`
    ``model`` plans; ``tta`` averages over the images' views (a mode of :data:`hw1.engine.TTA_MODES`;
    None: the plan's choice).

    A model trained at a smaller scale (``model.size``) sees each image resized to it as its
    training images were (:func:`hw1.data.images.resize_rgb`); its logits are upsampled back to (H, W).
    """
    model = model.with_tta(tta)
    size = tuple(images.shape[-2:])
    if model.size is not None:
        images = torch.stack([torch.from_numpy(resize_rgb(image.permute(1, 2, 0).numpy(), model.size)).permute(2, 0, 1)
                              for image in images])
    with autocast(model.device, model.amp):
        return top_class(probabilities(model.module, model.prepare(images), tta=model.tta, size=size)).cpu()


def segment(model, image, *, tta=None):
    """(H, W) int64 classes of one uint8 (3, H, W) image (:func:`segment_batch`)."""
    return segment_batch(model, image[None], tta=tta)[0]


def same_size_runs(images):
    """``images`` (a list of (3, H, W) tensors) split into consecutive runs of one size, in order."""
    runs = []
    for image in images:
        if runs and runs[-1][-1].shape == image.shape:
            runs[-1].append(image)
        else:
            runs.append([image])
    return runs


def predict_seg(image_dir, output_dir, checkpoint=None, device=None, tta=None, overwrite=False, batch_size=4):
    """Segment every .jpg/.png of ``image_dir`` into ``output_dir``; return the written paths.

    Images run through the model ``batch_size`` at a time (consecutive ones of one size together):
    on 2 EPYC cores (bf16, in one process) the 257 validation tiles took 14.1-16.3 s in batches of
    4, 16.8-18.4 s in batches of 1 and 16.1-18.8 s in batches of 8 (3 runs each, 2026-12-07).

    Files named ``*_mask.png`` are ground truth (the course's validation folder holds both) and
    are skipped. The masks are written to a hidden temporary folder and moved into ``output_dir``
    only when every image has been segmented: an unreadable image (or any other error) leaves
    ``output_dir`` as it was. A mask of that name already there is replaced only if hw1 wrote it,
    not ground truth (:mod:`hw1.outputs`), unless ``overwrite``.
    """
    from hw1.data.masks import write_mask

    device = get_device(device)
    # masks (ground truth beside the images, or an earlier run's output) are PNGs named as the course
    # names them; any other image is segmented, whatever its name (road_mask.jpg was skipped silently)
    files = [p for p in list_images(image_dir) if not p.name.lower().endswith(MASK_SUFFIX)]
    if not files:
        raise UserError(f"{image_dir}: only *_mask.png files here, no images to segment")
    output_dir = Path(output_dir)
    names = {}
    for path in files:
        if names.setdefault(mask_name(path), path) != path:
            raise UserError(f"{path}: would write the same {mask_name(path)} as {names[mask_name(path)].name}")
    check_outputs(output_dir, list(names), "mask", inputs=[("IMAGE_DIR", image_dir), ("--checkpoint", checkpoint)],
                  overwrite=overwrite)
    model = load_model(checkpoint, "seg", device)
    with staged_folder(output_dir) as stage:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images = [torch.from_numpy(read_rgb(path)).permute(2, 0, 1) for path in chunk]
            classes = [c for run in same_size_runs(images) for c in segment_batch(model, torch.stack(run), tta=tta)]
            for path, c in zip(chunk, classes):
                write_mask(c.numpy(), stage / mask_name(path), text=MASK_MARK)
    return [output_dir / mask_name(path) for path in files]


def get_args_parser():
    p = argparse.ArgumentParser(prog="python -m hw1.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True)
    for task in TASKS.values():
        s = sub.add_parser(task.name, help=task.predict_help)
        s.add_argument("image_dir")
        s.add_argument(task.output_name)
        add_tta_args(s, "as the checkpoint says (the shipped models record theirs)")
        s.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
        s.add_argument("--device", default=None, help="auto, cpu, cuda (default: auto)")
        s.add_argument("--overwrite", action="store_true",
                       help="replace an output even if it is an input or a file hw1 did not write (ground truth)")
        s.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    task = get_task(args.task)
    output = getattr(args, task.output_name)
    written = task.write_predictions(args.image_dir, output, checkpoint=args.checkpoint, device=args.device,
                                     tta=args.tta, overwrite=args.overwrite)
    print(f"wrote {len(written)} {task.output_noun} to {output}")
    return written


if __name__ == "__main__":
    run(main)
