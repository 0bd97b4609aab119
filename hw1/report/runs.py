"""Run folders as the report reads them: what each holds, the command that made it or would make it."""
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hw1.checkpoint import load_checkpoint
from hw1.errors import UserError
from hw1.models import REGISTRY, get_spec
from hw1.report.blocks import Missing
from hw1.run_dir import BEST, LAST, RunDir
from hw1.tasks import config_of, get_task



def course_model(task, slot):
    """The course's model for ``slot`` (A or B) of ``task``, to say which run to make when one is missing."""
    return get_task(task).course_model(slot)


@dataclass
class Run:
    """What a run folder holds; ``path`` is None for a run given as ``-``."""
    task: str
    slot: str
    path: Path | None = None
    config: object = None  # the run's hw1.config.TrainConfig (args.json, else the checkpoint's), or None
    records: list = field(default_factory=list)
    problem: str | None = None  # why there are no records
    epochs: dict = field(default_factory=dict)  # {epoch: epoch_NNN.pth}
    model_name: str | None = None
    model_config: dict | None = None

    @property
    def name(self):
        return f"{get_task(self.task).problem} model {self.slot}"

    @property
    def label(self):
        return f"{self.slot}: {self.model_name or course_model(self.task, self.slot)}"

    def file(self, *names):
        """The first of ``names`` that exists in the run folder (epoch files by number), or None."""
        for n in names:
            if isinstance(n, int):
                if n in self.epochs:
                    return self.epochs[n]
            elif self.path is not None and (self.path / n).is_file():
                return self.path / n
        return None

    def newest_checkpoint(self):
        return self.file(LAST, max(self.epochs, default=-1), BEST)

    def best_checkpoint(self):
        return self.file(BEST, LAST, max(self.epochs, default=-1))


def open_run(spec, task, slot):
    """Read a run folder; ``-`` is no run. A path that is not a run folder is a :class:`UserError`."""
    run = Run(task, slot)
    if spec == "-":
        return run
    path = Path(spec)
    flag = f"--{task}-runs"
    if not path.exists():
        raise UserError(f"{spec}: run folder not found ({flag} takes run folders, or - for a run you do not have)")
    if not path.is_dir():
        raise UserError(f"{spec}: not a folder ({flag} takes run folders written by {get_task(task).script})")
    run.path = path
    folder = RunDir(path)
    run.epochs = folder.epoch_files()
    if not (folder.args.is_file() or folder.metrics.is_file() or run.newest_checkpoint()):
        raise UserError(f"{spec}: not a run folder (no args.json, metrics.jsonl or checkpoint; "
                        f"{get_task(task).script} writes them)")
    args = folder.read_args()
    try:
        run.records = folder.read_metrics()
    except UserError as e:
        run.problem = str(e)
    ckpt_path = run.newest_checkpoint()
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        run.model_name, run.model_config = ckpt["model_name"], ckpt["model_config"]
        args = args or ckpt.get("args")
    else:
        run.model_name = (args or {}).get("model")
    if run.model_name in REGISTRY and get_spec(run.model_name).task != task:
        other = get_spec(run.model_name).task
        raise UserError(f"{spec}: a {other} run ({run.model_name}); pass it to --{other}-runs, not {flag}")
    run.config = config_of(task, args)
    return run


def train_command(run, data_dir="hw1_data"):
    """The command that made the run (as recorded, or rebuilt from args.json), or the one that would make it."""
    if run.path is None:
        model, task = course_model(run.task, run.slot), get_task(run.task)
        data = [] if Path(data_dir) == Path("hw1_data") else ["--data-dir", str(Path(data_dir) / task.layout.folder)]
        return shlex.join(["python", task.script, "--model", model, *data, "--out-dir", f"runs/{model}"])
    if run.config is not None and run.config.command:
        return run.config.command
    return shlex.join(["python", get_task(run.task).script, *(run.config.flags() if run.config is not None else [])])


def with_flag(command, flag, values):
    """``command`` with ``flag`` (and the values after it) replaced by ``flag values``."""
    tokens, out, skipping = shlex.split(command), [], False
    for t in tokens:
        if t == flag:
            skipping = True
            continue
        if skipping and not t.startswith("--"):
            continue
        skipping = False
        out.append(t)
    return shlex.join([*out, flag, *map(str, values)])


def planned_epochs(run):
    return (run.config and run.config.epochs) or (run.records[-1]["epoch"] if run.records else None)


def stage_checkpoints(run):
    """``[(stage, epoch, epoch_NNN.pth)]`` of the first, middle and last saved epoch, and a Missing note or None.

    The middle is the saved epoch nearest the midpoint of the first and last; a run that saved
    fewer than three epochs yields fewer stages.
    """
    from hw1.trainer import default_save_epochs

    found = sorted(run.epochs)
    picks = []
    if found:
        picks.append(("first", found[0]))
        inner = found[1:-1]
        if inner:
            mid = (found[0] + found[-1]) / 2
            picks.append(("middle", min(inner, key=lambda e: (abs(e - mid), e))))
        if len(found) > 1:
            picks.append(("last", found[-1]))
    missing = None
    if len(picks) < 3:
        planned = planned_epochs(run)
        wanted = default_save_epochs(planned) if planned else [1, "MID", "LAST"]
        have = ", ".join(str(e) for e in found) or "none"
        missing = Missing(f"{run.name} ({run.path}) saved epoch_NNN.pth for {len(found)} epoch(s) ({have}); "
                          f"this figure wants the first, middle and last epoch ({', '.join(map(str, wanted))}). "
                          f"Train it again keeping those checkpoints:",
                          with_flag(train_command(run), "--save-epochs", wanted))
    return [(stage, e, run.epochs[e]) for stage, e in picks], missing
