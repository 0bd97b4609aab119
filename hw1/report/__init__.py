"""The course report of both problems: one multi-page PDF and the same content as Markdown + PNGs.

    python viz.py report --cls-runs RUN_A RUN_B --seg-runs RUN_A RUN_B --data-dir hw1_data --out report.pdf

Sections follow the course's report order. P1: architecture of model A, accuracy of A and B,
implementation details of A, how B differs, PCA and t-SNE of A's penultimate features, training
curves. P2: architectures of A and B, mIoU with per-class IoU, implementation details, masks of
0013 / 0062 / 0104 at the early, middle and final epoch, training curves. Every number is read
from the run folders (``metrics.jsonl``, ``args.json``, checkpoints) or measured by a fresh
evaluation on the data; a piece that cannot be made (no run, no middle-epoch checkpoint, no data)
becomes a note that says what is missing and the command that makes it.

The package: :mod:`~hw1.report.runs` reads the run folders, :mod:`~hw1.report.evidence` holds every
step that reads a checkpoint or runs a model, :mod:`~hw1.report.builder` gathers each section's data
and :mod:`~hw1.report.sections` makes the section from it (:mod:`~hw1.report.blocks` are what they
hold, :mod:`~hw1.report.details` the implementation-details table, :mod:`~hw1.report.notes` the
notes on what is missing, :mod:`~hw1.report.figures` draws what the evidence measured, for viz.py's
``features`` and ``masks`` subcommands too); :mod:`~hw1.report.layout` sets the sections on PDF
pages, :mod:`~hw1.report.markdown` writes them as Markdown.
"""
from pathlib import Path

from hw1.errors import UserError
from hw1.io import atomic_write_text
from hw1.outputs import check_output, check_outputs
from hw1.report.blocks import fmt  # noqa: F401 (the report's number format, for callers)
from hw1.report.layout import BODY, PAGE_H, PAGE_W, page_figures, text_width, wrap, wrap_command, \
    write_pdf  # noqa: F401
from hw1.report.markdown import markdown
from hw1.report.runs import open_run, train_command, with_flag  # noqa: F401
from hw1.report.builder import ReportBuilder
from hw1.report.sections import title_section

TITLE = "DLCV 2022 hw1 report"
MASK_IDS = ("0013", "0062", "0104")
FIGURES = "p[12]_*.png"  # the report's PNGs in <stem>_files/


def report_paths(out):
    """(the PDF, its Markdown, the folder of its PNGs) of a report written to ``out``."""
    out = Path(out)
    return out, out.with_suffix(".md"), out.parent / f"{out.stem}_files"


def check_report_outputs(out, *, inputs, overwrite):
    """Refuse, before any work, a report whose files would replace what they should not
    (:mod:`hw1.outputs`): the PDF, the Markdown, and the PNGs of an earlier report it removes."""
    pdf, md, files = report_paths(out)
    check_output(pdf, "figure", inputs=inputs, overwrite=overwrite)
    check_output(md, "markdown", inputs=inputs, overwrite=overwrite)
    if files.is_dir():
        check_outputs(files, [p.name for p in files.glob(FIGURES)], "figure", inputs=inputs, overwrite=overwrite)


def write_report(*, cls_runs=("-", "-"), seg_runs=("-", "-"), data_dir="hw1_data", out="report.pdf", per_class=20,
                 perplexity=30.0, mask_ids=MASK_IDS, evaluate=False, title=TITLE, notes="", dpi=100, device,
                 command="python viz.py report", problems=("cls", "seg")):
    """Write ``out`` (PDF), the Markdown beside it and its PNGs in ``<stem>_files/``.

    ``cls_runs`` / ``seg_runs`` are run folders of models A and B (``-`` or left out: none);
    ``problems`` the parts of the report to write (``cls`` P1, ``seg`` P2).
    Returns ``{"pdf", "markdown", "figures", "pages", "sections"}``.
    """
    out, md, files_dir = report_paths(out)
    if out.suffix.lower() != ".pdf":
        raise UserError(f"--out {out}: expected a .pdf path (the .md and its figures are written beside it)")
    runs = {}
    for task, specs in (("cls", cls_runs), ("seg", seg_runs)):
        specs = list(specs)
        if len(specs) > 2:
            raise UserError(f"--{task}-runs: at most two run folders (model A, model B), got {len(specs)}")
        runs[task] = [open_run(spec, task, slot) for spec, slot in zip(specs + ["-"] * (2 - len(specs)), "AB")]
    builder = ReportBuilder(cls_runs=runs["cls"], seg_runs=runs["seg"], data_dir=data_dir, files_dir=files_dir,
                            per_class=per_class, perplexity=perplexity, mask_ids=mask_ids, evaluate=evaluate,
                            dpi=dpi, device=device)
    sections = builder.build(problems)
    sections.insert(0, title_section(title, notes, command, [r for task in problems for r in runs[task]], sections))
    pages = write_pdf(sections, out, title=title)
    atomic_write_text(markdown(sections, md.parent), md)
    # figures of an earlier report with other sections would otherwise linger beside the new ones
    for stale in set(files_dir.glob(FIGURES)) - set(builder.written):
        stale.unlink()
    return {"pdf": out, "markdown": md, "figures": builder.written, "pages": pages, "sections": sections}
