"""hw1.data.images, which every reader of P1 images, P2 pairs and masks goes through: PNGs of any bit
depth and colour type read as 8-bit RGB; folder listings skip links that lead nowhere, with a warning."""
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import write_pairs
from hw1.data.images import list_images, read_rgb
from hw1.data.masks import read_mask, rgb_to_class
from hw1.data.seg import load_seg_split, scan_pairs
from hw1.errors import UserError
from hw1.scoring import list_masks

pytestmark = pytest.mark.usefixtures("cls_one_thread")


# --- PNGs of every bit depth ----------------------------------------------------------------------


def png_bytes(pixels, bit_depth, color_type, palette=None):
    """A PNG file of ``pixels`` (H, W, channels) at any bit depth and colour type, written by hand:
    PIL cannot save most of these (2- and 4-bit gray, 16-bit gray with alpha, 16-bit RGB)."""
    h, w, _ = pixels.shape
    rows = []
    for row in pixels.reshape(h, -1).astype(np.uint64):
        if bit_depth >= 8:
            raw = row.astype(">u2" if bit_depth == 16 else np.uint8).tobytes()
        else:
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
        rows.append(b"\0" + raw)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + (chunk(b"PLTE", palette.astype(np.uint8).tobytes()) if palette is not None else b"")
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


# (PNG colour type, channels in the file, bit depths the format allows)
PNG_KINDS = {"gray": (0, 1, (1, 2, 4, 8, 16)), "rgb": (2, 3, (8, 16)), "palette": (3, 1, (1, 2, 4, 8)),
             "gray+alpha": (4, 2, (8, 16)), "rgba": (6, 4, (8, 16))}


@pytest.mark.reliability
@pytest.mark.parametrize("kind,bit_depth", [(k, d) for k, (_, _, depths) in PNG_KINDS.items() for d in depths])
def test_every_png_bit_depth_is_scaled_to_8_bits(kind, bit_depth, tmp_path):
    color_type, channels, _ = PNG_KINDS[kind]
    rng = np.random.default_rng(bit_depth)
    top = 2 ** bit_depth - 1
    samples = rng.integers(0, top + 1, size=(6, 7, channels))
    samples[0, 0] = 0
    samples[0, 1] = top  # the extremes: black and full white
    palette = rng.integers(0, 256, size=(top + 1, 3)) if kind == "palette" else None
    # What each pixel is in 8 bits: 16-bit samples keep their high byte (as PIL reads 16-bit RGB),
    # fewer bits are stretched to 0..255; alpha is dropped.
    eight = samples >> 8 if bit_depth == 16 else samples * 255 // top
    expected = palette[samples[..., 0]] if kind == "palette" else \
        np.repeat(eight[..., :1], 3, -1) if kind.startswith("gray") else eight[..., :3]
    path = tmp_path / "0000_sat.png"
    path.write_bytes(png_bytes(samples, bit_depth, color_type, palette))
    np.testing.assert_array_equal(read_rgb(path), expected)  # P1 and prediction
    # P2 pairs and masks, read through the same conversion.
    shutil.copy(path, tmp_path / "0000_mask.png")
    pairs_folder = tmp_path / "pairs"
    pairs_folder.mkdir()
    shutil.copy(path, pairs_folder / "0000_sat.jpg")  # PIL opens files by their content, not their name
    shutil.copy(path, pairs_folder / "0000_mask.png")
    assert load_seg_split(pairs_folder).images[0].permute(1, 2, 0).numpy().tolist() == expected.tolist()
    np.testing.assert_array_equal(read_mask(tmp_path / "0000_mask.png"), rgb_to_class(expected.astype(np.uint8)))


@pytest.mark.reliability
def test_16_bit_gray_reads_as_its_8_bit_picture(tmp_path):
    # The case that read as near-white: PIL saves and opens 16-bit grayscale as mode I;16.
    picture = np.random.default_rng(0).integers(0, 256, size=(32, 32)).astype(np.uint16)
    Image.fromarray(picture * 257).save(tmp_path / "gray16.png")  # 0..255 -> 0..65535
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode == "I;16"
    np.testing.assert_array_equal(read_rgb(tmp_path / "gray16.png"), np.repeat(picture[..., None], 3, -1))
    Image.fromarray(np.float32(picture)).save(tmp_path / "float.tiff")
    shutil.copy(tmp_path / "float.tiff", tmp_path / "float.png")
    with pytest.raises(UserError, match="float.png: a floating-point image"):
        read_rgb(tmp_path / "float.png")



# --- links in folders -----------------------------------------------------------------------------


@pytest.mark.reliability
def test_links_that_lead_nowhere_are_skipped_with_a_warning(tmp_path, caplog):
    folder = write_pairs(tmp_path / "pairs", [(8, 8)])
    (folder / "0001_sat.jpg").symlink_to(folder / "gone.jpg")  # its target is missing
    (folder / "0002_mask.png").symlink_to(folder / "0002_mask.png")  # a loop
    (folder / "0003_sat.jpg").symlink_to(folder / "0000_sat.jpg")  # a link to an image is an image
    (folder / "0003_mask.png").symlink_to(folder / "0000_mask.png")
    warning = f"{folder}: skipped 2 link(s) that lead nowhere (missing target or a loop), e.g. 0001_sat.jpg"
    listings = {  # every folder listing: P1 and prediction images, P2 pairs, masks to score
        "images": (lambda: [p.name for p in list_images(folder)],
                   ["0000_mask.png", "0000_sat.jpg", "0003_mask.png", "0003_sat.jpg"]),
        "pairs": (lambda: [i for i, _, _ in scan_pairs(folder)], ["0000", "0003"]),
        "masks": (lambda: list(list_masks(folder)), ["0000", "0003"]),
    }
    for name, (listing, expected) in listings.items():
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert listing() == expected, name
        assert [r.getMessage() for r in caplog.records] == [warning], name
