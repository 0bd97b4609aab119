"""The typesetter: sections laid out onto A4 landscape pages and written as one PDF.

A laid-out block is (height, ops); ops are drawing steps at positions relative to the block's top
left, in inches, which :func:`draw` puts onto a matplotlib figure per page.
"""
import functools

import matplotlib.figure
import numpy as np
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image as PILImage

from hw1.io import atomic_path
from hw1.report.blocks import Code, Figure, Missing, Paragraph, Table

PAGE_W, PAGE_H, MARGIN = 11.69, 8.27, 0.5  # inches
WIDTH = PAGE_W - 2 * MARGIN
BODY, SMALL, MONO = 10, 8.5, 8  # font sizes (points)
LEADING = 1.25  # line height / font size
GAP = 0.12  # between blocks
MIN_FIGURE = 3.0  # a figure shrunk below this height goes to the next page instead
FOOTER = 0.3
MEASURE_DPI = 720  # fine enough that whole-pixel glyph advances do not add up to a visible error


@functools.lru_cache(maxsize=1)
def _renderer():
    return RendererAgg(1, 1, MEASURE_DPI)


def text_width(text, size, **font):
    """Width in inches of ``text`` set in ``size`` points (``font``: FontProperties arguments)."""
    width, _, _ = _renderer().get_text_width_height_descent(text, FontProperties(size=size, **font), ismath=False)
    return width / MEASURE_DPI


def line_height(size):
    return size * LEADING / 72


def wrap(text, width, size, **font):
    """Lines of ``text`` no wider than ``width`` inches, broken at spaces (inside a word that is wider)."""
    lines = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if text_width(trial, size, **font) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and text_width(word, size, **font) > width:
                cut = max(1, int(len(word) * width / text_width(word, size, **font)))
                while cut > 1 and text_width(word[:cut], size, **font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def wrap_command(command, width_chars):
    """A shell command folded at spaces into lines of at most ``width_chars``, continued with `` \\``."""
    lines, line = [], ""
    for word in command.split(" "):
        if line and len(line) + 1 + len(word) + 2 > width_chars:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def _code_lines(text, width):
    # 6 % to spare: rasterised at a low dpi, hinting rounds each glyph's advance up to whole pixels
    chars = int(0.94 * width / text_width("M", MONO, family="monospace"))
    return [line for cmd in text.split("\n") for line in wrap_command(cmd, chars)]


def fit_widths(natural, total):
    """Column widths: each column its natural width if all fit, else the narrow ones theirs and the rest an equal share."""
    if sum(natural) <= total:
        return list(natural)
    widths, remaining = list(natural), total
    order = sorted(range(len(natural)), key=lambda i: natural[i])
    for k, i in enumerate(order):
        widths[i] = min(natural[i], remaining / (len(order) - k))
        remaining -= widths[i]
    return widths


# A laid-out block is (height, ops): ops are drawing steps at positions relative to the block's top left,
# in inches: ("text", x, y, string, size, font), ("rect", x, y, w, h, face, edge), ("line", x, y, w, lw),
# ("image", x, y, w, h, path).

def layout_text(lines, size, x=0.0, y=0.0, **font):
    return [("text", x, y + i * line_height(size), line, size, font) for i, line in enumerate(lines)]


def layout_block(block, width):
    if isinstance(block, Paragraph):
        lines = wrap(block.text, width, BODY)
        return len(lines) * line_height(BODY), layout_text(lines, BODY)
    if isinstance(block, Code):
        lines, pad = _code_lines(block.text, width - 0.2), 0.07
        h = len(lines) * line_height(MONO) + 2 * pad
        return h, [("rect", 0, 0, width, h, "0.95", "0.85"),
                   *layout_text(lines, MONO, 0.1, pad, family="monospace")]
    if isinstance(block, Missing):
        pad = 0.1
        what = wrap(block.what, width - 2 * pad, BODY)
        ops = [*layout_text(["Missing"], BODY, pad, pad, weight="bold"),
               *layout_text(what, BODY, pad, pad + line_height(BODY))]
        y = pad + (1 + len(what)) * line_height(BODY)
        if block.command:
            lines = _code_lines(block.command, width - 2 * pad)
            ops += layout_text(lines, MONO, pad + 0.1, y + 0.05, family="monospace")
            y += 0.05 + len(lines) * line_height(MONO)
        return y + pad, [("rect", 0, 0, width, y + pad, "#fff3e0", "#e69500"), *ops]
    if isinstance(block, Table):
        return layout_table(block, width)
    raise TypeError(f"no layout for {type(block).__name__}")


def layout_table(table, width):
    pad, rows = 0.03, [table.header, *table.rows]
    cells = [[str(c) for c in r] for r in rows]
    bold = [{"weight": "bold"} if i == 0 else {} for i in range(len(cells))]
    # (+ 0.01: a cell exactly as wide as its column must not wrap on a rounding error)
    natural = [max(text_width(r[c], SMALL, **bold[i]) for i, r in enumerate(cells)) + 2 * pad + 0.01
               for c in range(len(table.header))]
    widths = fit_widths(natural, width)
    total_w, y, ops = sum(widths), 0.0, []
    for i, row in enumerate(cells):
        wrapped = [wrap(cell, widths[c] - 2 * pad, SMALL, **bold[i]) for c, cell in enumerate(row)]
        h = max(len(lines) for lines in wrapped) * line_height(SMALL) + 2 * pad
        if i == 0:
            ops.append(("rect", 0, y, total_w, h, "0.9", "none"))
        x = 0.0
        for c, lines in enumerate(wrapped):
            ops += layout_text(lines, SMALL, x + pad, y + pad, **bold[i])
            x += widths[c]
        y += h
        ops.append(("line", 0, y, total_w, 0.8 if i in (0, len(cells) - 1) else 0.3))
    return y, ops


def image_size(path):
    with PILImage.open(path) as im:
        return im.size


def layout_figure(block, width, max_height):
    """The figure as large as fits ``width`` x ``max_height`` (never above its own size), caption below."""
    caption = wrap(block.caption, width, SMALL, style="italic")
    cap_h = len(caption) * line_height(SMALL) + 0.05
    px_w, px_h = image_size(block.path)
    w = width
    h = w * px_h / px_w
    if h > max_height - cap_h:
        h = max(max_height - cap_h, 0.5)
        w = h * px_w / px_h
    x = (width - w) / 2
    return h + cap_h, [("image", x, 0.0, w, h, block.path),
                       *layout_text(caption, SMALL, 0.0, h + 0.05, style="italic")]


def natural_figure_height(block, width):
    return layout_figure(block, width, float("inf"))[0]


def paginate(section, avail):
    """The section's blocks laid out on one page or more: ``[[(y, ops), ...], ...]``."""
    fixed = {id(b): layout_block(b, WIDTH) for b in section.blocks if not isinstance(b, Figure)}
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    fixed_h = sum(h + GAP for h, _ in fixed.values())
    natural = {id(f): natural_figure_height(f, WIDTH) for f in figures}
    if fixed_h + sum(min(natural[id(f)], MIN_FIGURE) + GAP for f in figures) <= avail:
        # one page: the figures share what the other blocks leave, in proportion to their size
        space = avail - fixed_h - GAP * len(figures)
        scale = min(1.0, space / sum(natural.values())) if figures else 1.0
        placed, y = [], 0.0
        for b in section.blocks:
            h, ops = layout_figure(b, WIDTH, natural[id(b)] * scale) if isinstance(b, Figure) else fixed[id(b)]
            placed.append((y, ops))
            y += h + GAP
        return [placed]
    pages, placed, y = [], [], 0.0
    for b in section.blocks:
        if isinstance(b, Figure):
            if placed and avail - y < min(natural[id(b)], MIN_FIGURE):
                pages.append(placed)
                placed, y = [], 0.0
            h, ops = layout_figure(b, WIDTH, avail - y)
        else:
            h, ops = fixed[id(b)]
            if placed and y + h > avail:
                pages.append(placed)
                placed, y = [], 0.0
        placed.append((y, ops))
        y += h + GAP
    return pages + [placed]


def page_figures(sections, *, footer, interpolation="none"):
    """One matplotlib figure per page (A4 landscape); ``interpolation`` of the embedded figure images
    ("none" puts their pixels into a PDF as they are)."""
    laid = []
    for s in sections:
        head_h = line_height(s.heading_size) + 0.15
        avail = PAGE_H - 2 * MARGIN - head_h - FOOTER
        for k, page in enumerate(paginate(s, avail)):
            laid.append((s, k, head_h, page))
    for n, (s, k, head_h, page) in enumerate(laid, start=1):
        fig = matplotlib.figure.Figure(figsize=(PAGE_W, PAGE_H))
        heading = s.title + (" (continued)" if k else "")
        fig.text(MARGIN / PAGE_W, 1 - MARGIN / PAGE_H, heading, fontsize=s.heading_size, weight="bold",
                 va="top", parse_math=False)
        fig.text(0.5, 0.35 * MARGIN / PAGE_H, f"{footer}  ·  page {n} of {len(laid)}", fontsize=8, color="0.4",
                 ha="center", va="bottom", parse_math=False)
        for y, ops in page:
            draw(fig, ops, MARGIN, MARGIN + head_h + y, interpolation)
        yield fig


def draw(fig, ops, x0, y0, interpolation):
    def box(x, y, w, h):  # inches from the top left -> figure fraction from the bottom left
        return [(x0 + x) / PAGE_W, 1 - (y0 + y + h) / PAGE_H, w / PAGE_W, h / PAGE_H]

    for op in ops:
        kind = op[0]
        if kind == "text":
            _, x, y, text, size, font = op
            fig.text((x0 + x) / PAGE_W, 1 - (y0 + y) / PAGE_H, text, fontsize=size, va="top", ha="left",
                     parse_math=False, **font)
        elif kind == "rect":
            _, x, y, w, h, face, edge = op
            left, bottom, fw, fh = box(x, y, w, h)
            fig.add_artist(Rectangle((left, bottom), fw, fh, transform=fig.transFigure, facecolor=face,
                                     edgecolor=edge, linewidth=0.8, zorder=-1))
        elif kind == "line":
            _, x, y, w, lw = op
            yy = 1 - (y0 + y) / PAGE_H
            fig.add_artist(Line2D([(x0 + x) / PAGE_W, (x0 + x + w) / PAGE_W], [yy, yy], color="0.3", linewidth=lw,
                                  transform=fig.transFigure))
        else:
            _, x, y, w, h, path = op
            ax = fig.add_axes(box(x, y, w, h))
            with PILImage.open(path) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation=interpolation, aspect="auto")
            ax.set_axis_off()


# --- writing ---------------------------------------------------------------------------------------------

def write_pdf(sections, path, *, title):
    """Write the pages to ``path`` atomically; return how many there are."""
    pages = 0
    with atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": title}) as pdf:
            for fig in page_figures(sections, footer=title):
                pdf.savefig(fig)
                pages += 1
    return pages
