"""hw1.data.batches: each batched augmentation against torchvision's per-image transform, pairs kept
aligned, and the stream's batches in the DataLoader's order."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from hw1.data.batches import (BatchStream, ClsBatchTransform, SegBatchTransform, crop, eval_batch, random_crop,
                              random_erasing, random_hflip, random_resized_crop, random_rot90)
from hw1.data.cls import MEAN, STD, ImageArrayDataset, cls_eval_transform
from hw1.data.masks import class_to_rgb, rgb_to_class
from hw1.data.seg import SegDataset

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def _images(n, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_crop_takes_each_images_own_window():
    images = _images(5, side=12)
    top, left = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([4, 3, 2, 1, 0])
    out = crop(images, top, left, 6, 7)
    for i in range(5):
        assert torch.equal(out[i], images[i, :, top[i]:top[i] + 6, left[i]:left[i] + 7])


def test_random_crop_is_a_uniform_window_of_the_reflect_padded_image():
    torch.manual_seed(0)
    images = _images(1).repeat(4050, 1, 1, 1)
    padded = F.pad(images[:1].float(), (4, 4, 4, 4), mode="reflect")[0].to(torch.uint8)
    out = random_crop(images, 4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    # the window of every output, found among the 81 of torchvision's RandomCrop(32, 4, reflect)
    windows = torch.stack([padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)])
    match = (out[:, None] == windows[None]).flatten(2).all(2)
    assert (match.sum(1) == 1).all()
    counts = torch.bincount(match.float().argmax(1), minlength=81)
    assert counts.min() > 20 and counts.max() < 90  # 50 expected each


def test_random_hflip_mirrors_half_and_both_tensors_alike():
    torch.manual_seed(0)
    images = _images(2000, side=4)
    masks = images[:, 0].clone()
    out, out_masks = random_hflip(images, masks)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert ((out == images).flatten(1).all(1) | flipped).all()
    assert torch.equal(out_masks, torch.where(flipped[:, None, None], masks.flip(-1), masks))
    assert 900 < flipped.sum() < 1100


def test_random_erasing_matches_torchvisions_distribution():
    torch.manual_seed(0)
    n = 4000
    ones = torch.ones(n, 3, 32, 32)
    ours = random_erasing(ones)
    reference = torch.stack([v2.RandomErasing()(ones[0]) for _ in range(n)])
    for out in (ours, reference):
        zero = out[:, 0] == 0
        # every erased region is one axis-aligned box, the same in each channel
        rows, cols = zero.any(2), zero.any(1)
        assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])
        assert torch.equal(out[:, 0], out[:, 2])
    share = [(out[:, 0] == 0).flatten(1).float().mean(1) for out in (ours, reference)]
    erased = [(s > 0).float().mean() for s in share]
    assert abs(erased[0] - erased[1]) < 0.04  # ~0.47 both (some draws do not fit)
    assert abs(share[0][share[0] > 0].mean() - share[1][share[1] > 0].mean()) < 0.01  # ~0.13 both
    assert abs(share[0][share[0] > 0].std() - share[1][share[1] > 0].std()) < 0.01


def _class_scene(seed=0, side=64):
    # an image whose colour is its class, asymmetric so that a missed flip or turn shows
    rng = np.random.default_rng(seed)
    classes = np.kron(rng.integers(0, 7, size=(side // 8, side // 8)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    classes[:8, :8] = 0
    return torch.from_numpy(class_to_rgb(classes)).permute(2, 0, 1).contiguous(), torch.from_numpy(classes)


def test_random_rot90_turns_pairs_alike_through_all_four_turns():
    torch.manual_seed(0)
    image, mask = _class_scene(side=16)
    images, masks = image[None].repeat(64, 1, 1, 1), mask[None].repeat(64, 1, 1)
    out, out_masks = random_rot90(images, masks)
    turns = set()
    for o, m in zip(out, out_masks):
        k = next(k for k in range(4) if torch.equal(m, torch.rot90(mask, k)))
        assert torch.equal(o, torch.rot90(image, k, dims=(-2, -1)))
        turns.add(k)
    assert turns == {0, 1, 2, 3}
    assert torch.equal(images[0], image)  # inputs untouched


def test_random_resized_crop_of_the_whole_image_is_the_image():
    torch.manual_seed(0)
    image, mask = _class_scene()
    out, out_masks = random_resized_crop(image[None].repeat(8, 1, 1, 1), mask[None].repeat(8, 1, 1), 64, (1.0, 1.0))
    assert torch.equal(out, image[None].expand(8, -1, -1, -1)) and torch.equal(out_masks, mask[None].expand(8, -1, -1))


def test_seg_batch_transform_keeps_images_and_masks_aligned():
    # after any crop/resize/flip/turn, every pixel still a pure palette colour sits on its own class
    torch.manual_seed(0)
    image, mask = _class_scene()
    x, y = SegBatchTransform(48, scale=(0.25, 1.0))(image[None].repeat(64, 1, 1, 1), mask[None].repeat(64, 1, 1))
    assert x.shape == (64, 3, 48, 48) and x.dtype == torch.float32 and y.shape == (64, 48, 48)
    assert y.dtype == torch.int64
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    rgb = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pure = np.isin(rgb, (0, 255)).all(-1)
    assert (rgb_to_class(rgb.reshape(-1, 48, 3))[pure.reshape(-1, 48)] == y.numpy().reshape(-1, 48)[pure.reshape(-1, 48)]).all()
    assert pure.mean() > 0.5
    assert len({m.numpy().tobytes() for m in y}) > 50  # random


def test_cls_batch_transforms():
    torch.manual_seed(0)
    images, labels = _images(16), torch.arange(16)
    x, y = ClsBatchTransform("none")(images, labels)
    assert torch.equal(y, labels)
    assert torch.equal(x, torch.stack([cls_eval_transform()(i) for i in images]))  # bit for bit: eval never depends on the loader
    for aug in ("light", "seed"):
        x, _ = ClsBatchTransform(aug)(images, labels)
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert not torch.equal(x, ClsBatchTransform(aug)(images, labels)[0])
    with pytest.raises(ValueError):
        ClsBatchTransform("heavy")


def test_stream_follows_its_sampler():
    images, labels = _images(10, side=4), torch.arange(10)
    ds = ImageArrayDataset(images, labels, [str(i) for i in range(10)], transform=cls_eval_transform())
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), 4, True)
    torch.manual_seed(3)
    expected = list(batches)  # a shuffle drawn from torch's global generator, as the DataLoader's
    torch.manual_seed(3)
    stream = BatchStream(ds, batches, transform=eval_batch, device=torch.device("cpu"))
    got = list(stream)
    assert len(stream) == len(got) == 2
    assert [y.tolist() for _, y in got] == expected
    for x, y in got:
        torch.testing.assert_close(x, torch.stack([ds[i][0] for i in y]))
    # under torchrun the sampler is a DistributedSampler, whose set_epoch the trainer calls
    shard = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    stream = BatchStream(ds, torch.utils.data.BatchSampler(shard, 5, False), transform=eval_batch,
                         device=torch.device("cpu"))
    stream.sampler.set_epoch(1)
    assert [y.tolist() for _, y in stream] == [list(shard)]


def test_stream_of_seg_pairs():
    image, mask = _class_scene(side=16)
    ds = SegDataset(image[None].repeat(3, 1, 1, 1), mask[None].repeat(3, 1, 1), ["a", "b", "c"])
    stream = BatchStream(ds, torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 2, False),
                         transform=eval_batch, device=torch.device("cpu"))
    (x, y), (x2, y2) = stream
    assert x.shape == (2, 3, 16, 16) and y.dtype == torch.int64 and len(y2) == 1
    assert torch.equal(y[0], mask.long())


def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    from hw1.data.batches import alternating_hflip

    images = torch.arange(64 * 3 * 2 * 2, dtype=torch.uint8).reshape(64, 3, 2, 2)
    indices = torch.arange(100, 164)
    flipped = [(alternating_hflip(images, indices, e) != images).flatten(1).any(1) for e in range(4)]
    assert torch.equal(flipped[0], ~flipped[1]) and torch.equal(flipped[0], flipped[2])  # once each way in 2 epochs
    assert 16 < int(flipped[0].sum()) < 48  # about half of them in any one epoch
    assert torch.equal(alternating_hflip(images, indices, 1), torch.where(
        flipped[1].view(-1, 1, 1, 1), images.flip(-1), images))
    # a function of the image's index and the epoch, not of the batch it comes in
    assert torch.equal(alternating_hflip(images[5:9], indices[5:9], 3), alternating_hflip(images, indices, 3)[5:9])


def test_the_stream_gives_a_transform_that_asks_the_indices_and_the_epoch():
    from hw1.data.batches import BatchStream

    seen = []

    class Asks:
        wants_indices = True

        def __call__(self, images, targets, indices, epoch):
            seen.append((indices.tolist(), epoch))
            return images, targets

    data = type("D", (), {"images": torch.zeros(4, 3, 2, 2), "targets": torch.arange(4)})()
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(4)), 2, False)
    stream = BatchStream(data, sampler, transform=Asks(), device=torch.device("cpu"))
    stream.set_epoch(7)
    list(stream)
    assert seen == [([0, 1], 7), ([2, 3], 7)]


def test_mixup_blends_each_image_with_the_previous_one_and_its_label_alike():
    from hw1.data.batches import mix_batch

    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    out, soft = mix_batch(images, labels, 5, mixup=0.4)
    lam = soft[1, 1].item()
    assert 0 < lam < 1 and torch.allclose(out, images * lam + images.roll(1, 0) * (1 - lam))
    assert torch.allclose(soft.sum(1), torch.ones(6)) and soft[0, 0] == 1
    assert torch.allclose(soft[1], torch.tensor([1 - lam, lam, 0, 0, 0]))
    draws = {round(mix_batch(images, labels, 5, mixup=0.4)[1][1, 1].item(), 6) for _ in range(20)}
    assert len(draws) == 20  # a new share every batch


def test_cutmix_pastes_one_box_and_weights_the_labels_by_its_area():
    from hw1.data.batches import mix_batch

    torch.manual_seed(0)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 10, 10).clone()  # image i is all i
    labels = torch.tensor([0, 1, 2, 3])
    for _ in range(20):
        out, soft = mix_batch(images, labels, 4, cutmix=1.0)
        pasted = out[:, 0] != images[:, 0]  # where each image shows its predecessor
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # the same box in every image
        assert torch.equal(out[1][:, pasted[0]], torch.zeros(3, int(pasted[0].sum())))  # from image 0
        share = pasted[0].float().mean().item()
        rows, cols = pasted[0].any(1).nonzero().flatten(), pasted[0].any(0).nonzero().flatten()
        assert int(pasted[0].sum()) == len(rows) * len(cols)  # one rectangle
        assert torch.allclose(soft[1, :2], torch.tensor([share, 1 - share]))  # label by area
    with_both = [mix_batch(images, labels, 4, mixup=1.0, cutmix=1.0)[0] for _ in range(40)]
    boxes = sum(bool(((o == 0) | (o == 1) | (o == 2) | (o == 3)).all()) for o in with_both)
    assert 5 < boxes < 35  # about half the batches take CutMix (whole pixels), the others Mixup


def test_mix_prob_mixes_that_share_of_the_batches():
    from hw1.data.batches import ClsBatchTransform

    torch.manual_seed(0)
    images, labels = torch.randint(256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8)
    never = ClsBatchTransform("none", cutmix=1.0, mix_prob=0.0)
    assert all(torch.equal(never(images, labels)[1], labels) for _ in range(10))  # class indices, untouched
    half = ClsBatchTransform("none", cutmix=1.0, mix_prob=0.5)
    mixed = sum(half(images, labels)[1].is_floating_point() for _ in range(200))
    assert 70 < mixed < 130


def test_cutout_zeroes_one_square_wholly_inside_each_image():
    from hw1.data.batches import random_cutout

    torch.manual_seed(0)
    images = torch.rand(50, 3, 10, 12) + 1  # no zero of their own
    out = random_cutout(images, 4)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # the same square per channel
    for z in zero[:, 0]:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert int(z.sum()) == 16 and len(rows) == 4 and len(cols) == 4
        assert rows[-1] - rows[0] == 3 and cols[-1] - cols[0] == 3  # contiguous
    assert torch.equal(out[~zero], images[~zero])
    corners = {(int(z.any(1).nonzero()[0]), int(z.any(0).nonzero()[0])) for z in zero[:, 0]}
    assert len(corners) > 20  # positions vary
