"""The report's sections, each made by one function from data: the runs as read from their folders
(:mod:`hw1.report.runs`), what :mod:`hw1.report.evidence` measured, the details table and the notes
on what is missing (:mod:`hw1.report.notes`). Nothing here loads a checkpoint or runs a model;
figures are drawn, and the report writes them."""
import math
import shlex
from datetime import date

from hw1 import plots
from hw1.models import get_spec
from hw1.report.blocks import Code, Figure, Paragraph, Section, Table, config_text, fmt
from hw1.report.details import shown
from hw1.report.figures import feature_figures, masks_figure
from hw1.report.runs import course_model, train_command
from hw1.tasks import get_task


def model_shown(run):
    """(model name, builder config) the architecture section draws: the run's, else the course's model
    for that slot with its builder's defaults."""
    if run.model_name is None or run.model_config is None:
        return course_model(run.task, run.slot), {}
    return run.model_name, run.model_config


def architecture(title, run, arch, notes):
    """``arch``: the :class:`~hw1.report.evidence.Architecture` of :func:`model_shown`."""
    if run.model_name is None or run.model_config is None:
        source = f"drawn with the builder's defaults of {arch.name} (no run gives its configuration)"
    else:
        source = f"drawn from the model_name and model_config of {run.newest_checkpoint()}"
    name, config, size = arch.name, arch.config, arch.input_size
    shown = config_text(config)
    fig = plots.arch_figure(arch.rows, arch.total, title=name + (f" ({shown})" if config else ""), input_size=size)
    table = shlex.join(["python", "viz.py", "arch", "--model", name]
                       + (["--model-config", *(f"{k}={v}" for k, v in config.items())] if config else []))
    return Section(title, [Figure(f"{run.label}: {source}; output shapes for a {size}x{size} input. "
                                  f"The same as a table: {table}", fig), *notes])


def _named_columns(task):
    """How many per-class columns the score table has: one per class the task's metric averages,
    where its classes have names; none otherwise (P1's 50 numbered classes)."""
    return (task.averaged or task.num_classes) if task.class_names else 0


def score_rows(task, run, fresh):
    """The table rows of one run of ``task`` (a :class:`~hw1.tasks.base.Task`): its best and last epoch
    as metrics.jsonl has them, then ``fresh`` (:class:`~hw1.report.evidence.FreshScore` s: the run's
    checkpoint, then its shipped exports). A task with named classes gets a column for each class its
    metric averages."""
    named = _named_columns(task)
    if not run.records:
        return [[run.label, "no result", "-"] + ["-"] * named]
    key = f"val_{task.metric}"
    best = max(run.records, key=lambda r: -math.inf if r.get(key) is None else r[key])
    last = run.records[-1]
    size = getattr(run.config, "size", None) if run.config else None
    size = f", images resized to {size}" if size else ""
    rows = []
    for r, which in [(best, "best")] + ([(last, "last")] if last is not best else []):
        per_class = [fmt(v) for v in (r.get(f"val_{task.per_class}") or [])[:named]]
        rows.append([run.label, f"metrics.jsonl, epoch {r['epoch']} of {last['epoch']} ({which}{size})",
                     fmt(r.get(key)), *per_class])
    for f in fresh:
        per_class = [fmt(v) for v in f.result[task.per_class][:named]]
        shipped = f" (shipped, exported from {f.exported_from.name})" if f.exported_from else ""
        tta = f", {f.tta} TTA" if f.tta != "none" else ""
        rows.append([run.label, f"fresh evaluation of {shown(f.checkpoint) if f.exported_from else f.checkpoint.name}"
                     f"{shipped} ({f.epoch}) on {f.data}" + (" at full size" if task.dense else "") + tta,
                     fmt(f.result[task.metric]), *per_class])
    return rows


def scores(title, task, runs, fresh, *, evaluate, notes):
    """Validation scores of ``runs`` of ``task`` (a :class:`~hw1.tasks.base.Task`); ``fresh``: each run's
    fresh scores (a list, maybe empty), ``evaluate``: whether they were asked for."""
    named = _named_columns(task)
    header = ["model", "source", task.metric_label] + list((task.class_names or ())[:named])
    rows = [row for run, score in zip(runs, fresh) for row in score_rows(task, run, score)]
    how = ("'fresh evaluation' rows score the checkpoint again on the data given to this report, and each "
           "checkpoint in checkpoints/ exported from the run as the course's scripts predict with it (its TTA)."
           if evaluate else "add --evaluate to score each run's best.pth afresh on --data-dir.")
    return Section(title, [Paragraph(f"Validation {task.metric_help}. 'metrics.jsonl' rows are what the training "
                                     f"run measured after that epoch; {how}"), Table(header, rows), *notes])


def implementation(title, runs, tables, *, only_differences=False, notes=()):
    """The details of ``runs`` side by side (``tables``: each run's ``[(setting, value)]``) and the
    commands that trained them; ``only_differences``: the settings in which the second differs."""
    if not runs or (only_differences and len(runs) < 2):
        return Section(title, list(notes))
    keys = [k for k, _ in tables[0]] + [k for t in tables[1:] for k, _ in t if k not in dict(tables[0])]
    values = [dict(t) for t in tables]
    rows = [[k, *(v.get(k, "-") for v in values)] for k in keys]
    blocks = []
    if only_differences:
        same = [r[0] for r in rows if r[1] == r[2]]
        rows = [r for r in rows if r[1] != r[2]]
        blocks.append(Paragraph(f"Settings in which {runs[1].label} differs from {runs[0].label} "
                                f"(the same in both: {', '.join(same) or 'none'})."))
    blocks.append(Table(["setting", *(r.label for r in runs)], rows))
    for r in runs[1:] if only_differences else runs:
        how = "" if r.config and r.config.command else ", rebuilt from its args.json (the run did not record its command)"
        blocks += [Paragraph(f"{r.label} was trained with ({r.path}{how}):"), Code(train_command(r))]
    return Section(title, blocks + list(notes))


def stages_text(stages):
    return ", ".join(f"{stage} = epoch {e}" for stage, e, _ in stages)


def features(titles, run, stages, found, *, per_class, perplexity, notes):
    """The PCA and the t-SNE section of ``found`` (:class:`~hw1.report.evidence.Features` of the
    checkpoints of ``stages``, :func:`hw1.report.runs.stage_checkpoints`)."""
    pca_fig, tsne_fig = feature_figures(found, num_classes=get_spec(run.model_name).num_classes,
                                        perplexity=perplexity)
    subset = f"the first {per_class} images of each class" if per_class else "all images"
    images = f"{subset} of {found.data} ({len(found.labels)} images)"
    pca = Figure(f"{run.label} ({run.path}), {stages[-1][2].name}: the two principal components of the "
                 f"penultimate features of {images}, coloured by class.", pca_fig)
    tsne = Figure(f"{run.label} ({run.path}): {stages_text(stages)}; {images}, perplexity {perplexity:g}.", tsne_fig)
    return [Section(titles[0], [pca]), Section(titles[1], [tsne, *notes])]


def masks(title, run, stages, found, *, notes):
    """The masks of ``found`` (:class:`~hw1.report.evidence.Masks` of the checkpoints of ``stages``, or None)."""
    blocks = []
    if found is not None:
        size = run.config.size if run.config else None
        at = f", predicted at {size}x{size} (the size the run trained at)" if size else ""
        blocks.append(Figure(f"{run.label} ({run.path}): {stages_text(stages)}{at}. Each prediction's title "
                             f"gives that image's mIoU over classes 0-5.", masks_figure(found)))
    return Section(title, blocks + list(notes))


def curves(title, task, runs, notes):
    have = [r for r in runs if r.records]
    blocks = []
    if have:
        fig = plots.curves_figure([(f"{r.label} ({r.path.name})", r.records) for r in have])
        key, name = f"val_{get_task(task).metric}", get_task(task).metric_label
        lines = [f"{r.label}: validation {name} {fmt(r.records[0][key])} after epoch {r.records[0]['epoch']}, "
                 f"{fmt(r.records[-1][key])} after epoch {r.records[-1]['epoch']}." for r in have]
        blocks.append(Figure("From each run's metrics.jsonl. " + " ".join(lines), fig))
    return Section(title, blocks + list(notes))


def title_section(title, notes, command, runs, sections):
    """The first page: notes, how the report was made, the runs it reads and what each section holds."""
    s = Section(title, heading_size=20)
    if notes:
        s.blocks.append(Paragraph(notes))
    s.blocks.append(Paragraph(f"Made on {date.today().isoformat()} with the command below. Every number is read from "
                              f"the run folders (metrics.jsonl, args.json, checkpoints) or measured afresh on the "
                              f"data; what could not be made is a note with the command that makes it."))
    s.blocks.append(Code(command))
    rows = []
    for run in runs:
        c = run.config
        done = f"{run.records[-1]['epoch']} of {c.epochs if c else '?'}" if run.records else "-"
        rows.append([run.name, str(run.path) if run.path else "none given", run.model_name or "-", done,
                     (c and c.device_name) or ("not recorded" if run.path else "-")])
    s.blocks.append(Table(["run", "folder", "model", "epochs", "device"], rows))
    s.blocks.append(Table(["section", "status"],
                          [[x.title, f"{len(x.missing())} note(s) on what is missing" if x.missing() else "complete"]
                           for x in sections]))
    return s
