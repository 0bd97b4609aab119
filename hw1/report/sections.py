"""The report's sections in the course's order, each read from the run folders or measured afresh."""
import math
import shlex
from datetime import date
from pathlib import Path


from hw1 import plots
from hw1.data.masks import CLASS_NAMES, UNKNOWN
from hw1.errors import UserError
from hw1.models import get_spec
from hw1.models.introspect import format_params
from hw1.report.blocks import Code, Figure, Missing, Paragraph, Section, Table, config_text, fmt, minutes, \
    transform_names
from hw1.report.evidence import architecture, checkpoint_features, cls_images, fresh_score, parameter_count, \
    predicted_masks
from hw1.report.figures import feature_figures, masks_figure
from hw1.report.runs import COURSE_MODEL, DATA, METRIC, PART, stage_checkpoints, train_command, with_flag
from hw1.run_dir import LAST
from hw1.summary import summarize_run


def details(run, summary):
    """``[(setting, value)]`` of a run, every value read from its config / checkpoint / metrics."""
    c = run.config
    rows = [("model", run.model_name or (c.model if c else None) or "-"),
            ("model config", config_text(run.model_config))]
    if run.model_name and run.model_config is not None:
        total = parameter_count(run.model_name, run.model_config)
        rows.append(("parameters", f"{format_params(total)} ({total:,})"))
    if c is None:
        return rows + [("settings", "not recorded by the run (no args.json)")]
    rows.append(("initial weights", c.weights))
    if c.opt == "sgd":
        opt = f"SGD, momentum {c.momentum}" + (", Nesterov" if c.nesterov else "")
    else:
        opt = {"adamw": "AdamW"}.get(c.opt, c.opt or "-")
    opt += f", weight decay {c.weight_decay}" + (" (not on norms and biases)" if c.no_wd_norm else "")
    rows.append(("optimizer", opt))
    warm = c.warmup_epochs or 0
    rows.append(("learning rate", f"{c.lr} peak, cosine stepped every iteration down to "
                                  f"{c.min_lr}; " + (f"linear warm-up of {warm} epochs" if warm else "no warm-up")))
    done = run.records[-1]["epoch"] if run.records else 0
    rows.append(("epochs, batch", f"{done} of {c.epochs} epochs, batch {c.batch_size}"))
    if run.task == "cls":
        from hw1.data.cls import AUGMENTATIONS, cls_train_transform

        steps = transform_names(cls_train_transform(c.aug)) if c.aug in AUGMENTATIONS else []
        rows.append(("augmentation", f"{c.aug}: {', '.join(steps)}" if steps else f"{c.aug or '-'}"))
        rows.append(("loss", f"cross-entropy, label smoothing {c.label_smoothing}"))
    else:
        from hw1.data.seg import seg_train_transform

        if c.crop_size:
            steps = transform_names(seg_train_transform(c.crop_size, scale=(c.min_scale, 1.0)))
            rows.append(("augmentation", f"{', '.join(steps)}; crop {c.crop_size}, "
                                         f"area {c.min_scale}-1 of the image"))
        rows.append(("image size", f"resized to {c.size}x{c.size} on load" if c.size else "as stored (512x512)"))
        aux = c.aux_weight or 0
        rows.append(("loss", f"pixel-wise cross-entropy, class {UNKNOWN} ({CLASS_NAMES[UNKNOWN]}) ignored"
                     + (f", + {aux} x the auxiliary head's loss" if aux else "")))
    rows.append(("runtime", f"autocast {c.amp}, channels_last {c.channels_last}, "
                            f"torch.compile {c.compile}, gradient clipping {c.grad_clip or 'none'}, "
                            f"seed {c.seed}"))
    device = [f"torch {c.torch_version}" if c.torch_version else "", c.device_name or ""]
    rows.append(("device", ", ".join(d for d in device[::-1] if d) or "not recorded by the run"))
    if summary:
        rows.append(("training time", f"{minutes(summary['train_seconds'])} for {summary['epochs']} epochs, "
                                      f"{summary['train_img_s']:.0f} img/s on average"))
    return rows


class ReportBuilder:
    """Collects the sections; figures are written as PNGs into ``files_dir`` as they are made."""

    def __init__(self, *, cls_runs, seg_runs, data_dir, files_dir, per_class, perplexity, mask_ids, evaluate,
                 dpi, device):
        self.runs = {"cls": cls_runs, "seg": seg_runs}
        self.data_dir = Path(data_dir) if data_dir else None
        self.files_dir = Path(files_dir)
        self.per_class, self.perplexity, self.mask_ids = per_class, perplexity, list(mask_ids)
        self.evaluate, self.dpi, self.device = evaluate, dpi, device
        self.sections, self.written = [], []
        self.numbered = {"cls": 0, "seg": 0}
        self._summary = {}

    # helpers
    def section(self, task, title):
        """A new section of ``task``, numbered in order: ``P1.3  title``, its figure ``p1_3.png``."""
        self.numbered[task] += 1
        n = self.numbered[task]
        s = Section(f"{PART[task]}.{n}  {title}", key=f"{PART[task].lower()}_{n}")
        self.sections.append(s)
        return s

    def figure(self, section, fig, caption):
        """Write ``fig`` as the section's PNG (``key.png``) and return its block."""
        path = self.files_dir / f"{section.key}.png"
        self.written += plots.save_figure(fig, path, dpi=self.dpi)
        return Figure(path, caption)

    def summary(self, run):
        if run.path not in self._summary:
            try:
                self._summary[run.path] = summarize_run(run.path)
            except UserError:
                self._summary[run.path] = None
        return self._summary[run.path]

    def command(self, run):
        return train_command(run, self.data_dir or "hw1_data")

    def no_run(self, run):
        return Missing(f"No {run.name} run given (the course's model {run.slot} is "
                       f"{COURSE_MODEL[run.task, run.slot]}). Train it, then pass its folder in "
                       f"--{run.task}-runs:", self.command(run))

    def no_records(self, run):
        if run.path is None:
            return self.no_run(run)
        last = run.file(LAST)
        command = self.command(run)
        return Missing(f"{run.name}: {run.problem}. " + ("Continue the run:" if last else "Start (or restart) it:"),
                       with_flag(command, "--resume", [last]) if last else command)

    def unfinished(self, run):
        planned = run.config.epochs if run.config else None
        if run.records and planned and run.records[-1]["epoch"] < planned and run.file(LAST):
            return Missing(f"{run.name} ({run.path}) stopped after epoch {run.records[-1]['epoch']} of {planned}. "
                           f"Continue it:", with_flag(train_command(run), "--resume",
                                                      [run.file(LAST)]))
        return None

    def data(self, task):
        """(validation folder, labels CSV or None) of ``task``, or a Missing note."""
        part, split, archive = DATA[task]
        if self.data_dir is None:
            return Missing(f"No --data-dir given: this needs {part}/{split}. Extract the course data and pass "
                           f"--data-dir hw1_data:", f"mkdir -p hw1_data && tar xzf {archive} -C hw1_data")
        folder = self.data_dir / part / split
        if not folder.is_dir():
            return Missing(f"{folder}: not found. Extract the course data:",
                           f"mkdir -p {self.data_dir} && tar xzf {archive} -C {self.data_dir}")
        csv = self.data_dir / part / "val_gt.csv"
        return folder, (csv if task == "cls" and csv.is_file() else None)

    # sections
    def architecture(self, task, run, title):
        s = self.section(task, title)
        name, config = run.model_name, run.model_config
        notes = [self.no_run(run)] if run.path is None else []
        if name is None or config is None:
            if run.path is not None:
                notes.append(Missing(f"{run.name} ({run.path}) has no checkpoint to read the model from. "
                                     f"Train it:", self.command(run)))
            name, config = COURSE_MODEL[task, run.slot], {}
            source = f"drawn with the builder's defaults of {name} (no run gives its configuration)"
        else:
            source = f"drawn from the model_name and model_config of {run.newest_checkpoint()}"
        arch = architecture(name, config)
        size = arch.input_size
        shown = config_text(config)
        fig = plots.arch_figure(arch.rows, arch.total, title=name + (f" ({shown})" if config else ""), input_size=size)
        arch = shlex.join(["python", "viz.py", "arch", "--model", name]
                          + (["--config", *(f"{k}={v}" for k, v in config.items())] if config else []))
        s.blocks.append(self.figure(s, fig, f"{run.label}: {source}; output shapes for a {size}x{size} input. "
                                         f"The same as a table: {arch}"))
        s.blocks += notes

    def scores(self, task, runs, title):
        s = self.section(task, title)
        seg = task == "seg"
        header = ["model", "source", "mIoU" if seg else "accuracy"] + (list(CLASS_NAMES[:6]) if seg else [])
        rows, notes = [], []
        data = self.data(task) if self.evaluate else None
        for run in runs:
            if not run.records:
                rows.append([run.label, "no result", "-"] + ["-"] * 6 * seg)
                notes.append(self.no_records(run))
                continue
            key = f"val_{METRIC[task]}"
            best = max(run.records, key=lambda r: -math.inf if r.get(key) is None else r[key])
            last = run.records[-1]
            size = f", images resized to {run.config.size}" if seg and run.config and run.config.size else ""
            for r, which in [(best, "best")] + ([(last, "last")] if last is not best else []):
                per_class = [fmt(v) for v in (r.get("val_iou") or [])[:6]] if seg else []
                rows.append([run.label, f"metrics.jsonl, epoch {r['epoch']} of {last['epoch']} ({which}{size})",
                             fmt(r.get(key)), *per_class])
            if (u := self.unfinished(run)) is not None:
                notes.append(u)
            if isinstance(data, Missing):
                continue
            if data is not None and (ckpt := run.best_checkpoint()) is not None:
                fresh = fresh_score(ckpt, task, *data, self.device)
                result = fresh.result
                per_class = [fmt(v) for v in result["iou"][:6]] if seg else []
                rows.append([run.label, f"fresh evaluation of {ckpt.name} ({fresh.epoch}) on {data[0]}"
                             + (" at full size" if seg else ""), fmt(result[METRIC[task]]), *per_class])
        what = "mIoU over classes 0-5 (the course's metric: one confusion matrix pooled over all pixels)" if seg \
            else "accuracy over all validation images"
        s.blocks.append(Paragraph(f"Validation {what}. 'metrics.jsonl' rows are what the training run measured "
                                  f"after that epoch; " + ("'fresh evaluation' rows score the checkpoint again on "
                                                           "the data given to this report." if self.evaluate else
                                                           "add --evaluate to score each run's best.pth afresh on "
                                                           "--data-dir.")))
        s.blocks.append(Table(header, rows))
        if isinstance(data, Missing):
            notes.append(data)
        s.blocks += notes

    def implementation(self, task, runs, title, *, only_differences=False):
        s = self.section(task, title)
        have = [r for r in runs if r.path is not None and (r.config or r.model_name)]
        notes = [self.no_run(r) if r.path is None else self.no_records(r) for r in runs if r not in have]
        if not have or (only_differences and len(have) < 2):
            s.blocks += notes
            return
        table = [details(r, self.summary(r)) for r in have]
        keys = [k for k, _ in table[0]] + [k for t in table[1:] for k, _ in t if k not in dict(table[0])]
        values = [dict(t) for t in table]
        rows = [[k, *(v.get(k, "-") for v in values)] for k in keys]
        if only_differences:
            same = [r[0] for r in rows if r[1] == r[2]]
            rows = [r for r in rows if r[1] != r[2]]
            s.blocks.append(Paragraph(f"Settings in which {have[1].label} differs from {have[0].label} "
                                      f"(the same in both: {', '.join(same) or 'none'})."))
        s.blocks.append(Table(["setting", *(r.label for r in have)], rows))
        for r in have[1:] if only_differences else have:
            how = "" if r.config and r.config.command else ", rebuilt from its args.json (the run did not record its command)"
            s.blocks.append(Paragraph(f"{r.label} was trained with ({r.path}{how}):"))
            s.blocks.append(Code(self.command(r)))
        s.blocks += notes

    def features(self, run):
        pca = self.section("cls", "PCA of model A's penultimate features")
        tsne = self.section("cls", "t-SNE of model A's penultimate features: first, middle and last epoch")
        if run.path is None:
            for s in (pca, tsne):
                s.blocks.append(self.no_run(run))
            return
        stages, missing = stage_checkpoints(run)
        data = self.data("cls")
        if isinstance(data, Missing) or not stages:
            for s in (pca, tsne):
                s.blocks += [m for m in (missing, data) if isinstance(m, Missing)]
            return
        folder, csv = data
        images, labels = cls_images(folder, labels_csv=csv, per_class=self.per_class)
        subset = f"the first {self.per_class} images of each class" if self.per_class else "all images"
        features = checkpoint_features([p for _, _, p in stages], images, labels, data=folder, device=self.device)
        pca_fig, tsne_fig = feature_figures(features, num_classes=get_spec(run.model_name).num_classes,
                                            perplexity=self.perplexity)
        stage_text = ", ".join(f"{stage} = epoch {e}" for stage, e, _ in stages)
        pca.blocks.append(self.figure(pca, pca_fig, f"{run.label} ({run.path}), {stages[-1][2].name}: the two "
                                               f"principal components of the penultimate features of {subset} of "
                                               f"{folder} ({len(labels)} images), coloured by class."))
        tsne.blocks.append(self.figure(tsne, tsne_fig, f"{run.label} ({run.path}): {stage_text}; {subset} of {folder} "
                                                 f"({len(labels)} images), perplexity {self.perplexity:g}."))
        if missing:
            tsne.blocks.append(missing)

    def masks(self, run, title):
        s = self.section("seg", title)
        if run.path is None:
            s.blocks.append(self.no_run(run))
            return
        stages, missing = stage_checkpoints(run)
        data = self.data("seg")
        if isinstance(data, Missing):
            s.blocks += [data] + ([missing] if missing else [])
            return
        folder = data[0]
        ids = [i for i in self.mask_ids if (folder / f"{i}_sat.jpg").is_file() and (folder / f"{i}_mask.png").is_file()]
        absent = [i for i in self.mask_ids if i not in ids]
        if stages and ids:
            size = run.config.size if run.config else None
            fig = masks_figure(predicted_masks([p for _, _, p in stages], folder, ids, size=size, device=self.device))
            at = f", predicted at {size}x{size} (the size the run trained at)" if size else ""
            stage_text = ", ".join(f"{stage} = epoch {e}" for stage, e, _ in stages)
            s.blocks.append(self.figure(s, fig, f"{run.label} ({run.path}): {stage_text}{at}. Each prediction's "
                                             f"title gives that image's mIoU over classes 0-5."))
        if absent:
            s.blocks.append(Missing(f"{folder} has no {', '.join(f'{i}_sat.jpg + {i}_mask.png' for i in absent)}; "
                                    f"--mask-ids names images of that folder."))
        if missing:
            s.blocks.append(missing)

    def curves(self, task, runs):
        s = self.section(task, "Training curves")
        have = [r for r in runs if r.records]
        if have:
            fig = plots.curves_figure([(f"{r.label} ({r.path.name})", r.records) for r in have])
            key, name = f"val_{METRIC[task]}", {"cls": "accuracy", "seg": "mIoU"}[task]
            lines = [f"{r.label}: validation {name} {fmt(r.records[0][key])} after epoch {r.records[0]['epoch']}, "
                     f"{fmt(r.records[-1][key])} after epoch {r.records[-1]['epoch']}." for r in have]
            s.blocks.append(self.figure(s, fig, "From each run's metrics.jsonl. " + " ".join(lines)))
        s.blocks += [self.no_records(r) for r in runs if not r.records]

    def build(self, problems=("cls", "seg")):
        """The sections of ``problems`` (both by default), in the course's order."""
        if "cls" in problems:
            self.build_cls()
        if "seg" in problems:
            self.build_seg()
        return self.sections

    def build_cls(self):
        a, b = self.runs["cls"]
        self.architecture("cls", a, "Architecture of model A")
        self.scores("cls", [a, b], "Accuracy of models A and B on the validation set")
        self.implementation("cls", [a], "Implementation details of model A")
        self.implementation("cls", [a, b], "Model B and how it differs from model A", only_differences=True)
        self.features(a)
        self.curves("cls", [a, b])

    def build_seg(self):
        a, b = self.runs["seg"]
        self.architecture("seg", a, "Architecture of model A")
        self.architecture("seg", b, "Architecture of model B")
        self.scores("seg", [a, b], "mIoU of models A and B on the validation set")
        self.implementation("seg", [a, b], "Implementation details of models A and B")
        self.masks(b, "Predicted masks during training: model B (the course asks for the improved model)")
        self.masks(a, "Predicted masks during training: model A")
        self.curves("seg", [a, b])


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
