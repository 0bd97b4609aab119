"""The report's sections of P1 and P2 in the course's order: each section's data gathered (runs,
evidence, notes), its section made, numbered and its figure written."""
from pathlib import Path

from hw1 import plots
from hw1.errors import UserError
import hw1.report.evidence as evidence
import hw1.report.notes as notes
import hw1.report.sections as sections
from hw1.report.blocks import Figure, Missing, Section
from hw1.report.details import RunFacts, details
from hw1.report.runs import stage_checkpoints
from hw1.summary import summarize_run
from hw1.tasks import get_task


class ReportBuilder:
    """Holds the report's options; the figures are written as PNGs into ``files_dir`` as the sections
    are made (``written``)."""

    def __init__(self, *, cls_runs, seg_runs, data_dir, files_dir, per_class, perplexity, mask_ids, evaluate,
                 dpi, device):
        self.runs = {"cls": cls_runs, "seg": seg_runs}
        self.data_dir = Path(data_dir) if data_dir else None
        self.files_dir = Path(files_dir)
        self.per_class, self.perplexity, self.mask_ids = per_class, perplexity, list(mask_ids)
        self.evaluate, self.dpi, self.device = evaluate, dpi, device
        self.written = []
        self._details = {}

    def build(self, problems=("cls", "seg")):
        """The sections of ``problems`` (both by default), in the course's order."""
        made = {"cls": self.cls_sections, "seg": self.seg_sections}
        return [self.place(task, n, s) for task in ("cls", "seg") if task in problems
                for n, s in enumerate(made[task](*self.runs[task]), start=1)]

    def cls_sections(self, a, b):
        yield self.architecture(a, "Architecture of model A")
        yield self.scores("cls", [a, b], "Accuracy of models A and B on the validation set")
        yield self.implementation([a], "Implementation details of model A")
        yield self.implementation([a, b], "Model B and how it differs from model A", only_differences=True)
        yield from self.features(a, ("PCA of model A's penultimate features",
                                     "t-SNE of model A's penultimate features: first, middle and last epoch"))
        yield self.curves("cls", [a, b])

    def seg_sections(self, a, b):
        yield self.architecture(a, "Architecture of model A")
        yield self.architecture(b, "Architecture of model B")
        yield self.scores("seg", [a, b], "mIoU of models A and B on the validation set")
        yield self.implementation([a, b], "Implementation details of models A and B")
        yield self.masks(b, "Predicted masks during training: model B (the course asks for the improved model)")
        yield self.masks(a, "Predicted masks during training: model A")
        yield self.curves("seg", [a, b])

    def place(self, task, n, section):
        """``section`` numbered ``P1.3  title``, its figure written as ``p1_3.png``."""
        problem = get_task(task).problem
        section.title = f"{problem}.{n}  {section.title}"
        section.key = f"{problem.lower()}_{n}"
        for block in section.blocks:
            if isinstance(block, Figure) and block.drawing is not None:
                block.path = self.files_dir / f"{section.key}.png"
                self.written += plots.save_figure(block.drawing, block.path, dpi=self.dpi)
                block.drawing = None
        return section

    # each section's data
    def architecture(self, run, title):
        arch = evidence.architecture(*sections.model_shown(run))
        return sections.architecture(title, run, arch, notes.no_model(run, self.data_dir))

    def scores(self, task, runs, title):
        data = notes.data_folder(task, self.data_dir) if self.evaluate else None
        fresh = [self.fresh_score(run, task, data) for run in runs]
        found = [notes.no_records(r, self.data_dir) if not r.records else notes.unfinished(r) for r in runs]
        found.append(data if isinstance(data, Missing) else None)
        return sections.scores(title, get_task(task), runs, fresh, evaluate=self.evaluate,
                               notes=[n for n in found if n])

    def fresh_score(self, run, task, data):
        """The run's best.pth scored afresh, then each shipped export of the run with its own TTA (what
        hw1.predict and the course's scripts predict with), or [] when not asked or not possible."""
        if not run.records or not isinstance(data, tuple) or (ckpt := run.best_checkpoint()) is None:
            return []
        shipped = [evidence.fresh_score(e.path, task, *data, self.device, exported_from=e.source)
                   for e in evidence.exports(run.path)]
        return [evidence.fresh_score(ckpt, task, *data, self.device), *shipped]

    def implementation(self, runs, title, *, only_differences=False):
        have = [r for r in runs if r.path is not None and (r.config or r.model_name)]
        found = [notes.no_run(r, self.data_dir) if r.path is None else notes.no_records(r, self.data_dir)
                 for r in runs if r not in have]
        return sections.implementation(title, have, [self.details(r) for r in have],
                                       only_differences=only_differences, notes=found)

    def details(self, run):
        if run.path not in self._details:
            try:
                summary = summarize_run(run.path)
            except UserError:
                summary = None
            known = run.model_name and run.model_config is not None
            parameters = evidence.parameter_count(run.model_name, run.model_config) if known else None
            self._details[run.path] = details(RunFacts(run, parameters, summary, evidence.exports(run.path)))
        return self._details[run.path]

    def features(self, run, titles):
        if run.path is None:
            return [Section(t, [notes.no_run(run, self.data_dir)]) for t in titles]
        stages, missing = stage_checkpoints(run)
        data = notes.data_folder("cls", self.data_dir)
        if isinstance(data, Missing) or not stages:
            return [Section(t, [m for m in (missing, data) if isinstance(m, Missing)]) for t in titles]
        folder, csv = data
        images, labels = evidence.cls_images(folder, labels_csv=csv, per_class=self.per_class)
        found = evidence.checkpoint_features([p for _, _, p in stages], images, labels, data=folder,
                                             device=self.device)
        return sections.features(titles, run, stages, found, per_class=self.per_class, perplexity=self.perplexity,
                                 notes=[missing] if missing else [])

    def masks(self, run, title):
        if run.path is None:
            return Section(title, [notes.no_run(run, self.data_dir)])
        stages, missing = stage_checkpoints(run)
        data = notes.data_folder("seg", self.data_dir)
        if isinstance(data, Missing):
            return Section(title, [data] + ([missing] if missing else []))
        folder = data[0]
        layout = get_task("seg").layout
        ids = [i for i in self.mask_ids
               if (folder / f"{i}{layout.image_suffix}").is_file() and (folder / f"{i}{layout.mask_suffix}").is_file()]
        absent = [i for i in self.mask_ids if i not in ids]
        found = None
        if stages and ids:
            found = evidence.predicted_masks([p for _, _, p in stages], folder, ids,
                                             size=run.config.size if run.config else None, device=self.device)
        found_notes = ([notes.absent_masks(folder, absent)] if absent else []) + ([missing] if missing else [])
        return sections.masks(title, run, stages, found, notes=found_notes)

    def curves(self, task, runs):
        return sections.curves("Training curves", task, runs,
                               [notes.no_records(r, self.data_dir) for r in runs if not r.records])
