"""The notes on what a section is missing, each with the command that makes it."""
from hw1.report.blocks import Missing
from hw1.report.runs import course_model, train_command, with_flag
from hw1.run_dir import LAST
from hw1.tasks import get_task


def command(run, data_dir):
    return train_command(run, data_dir or "hw1_data")


def no_run(run, data_dir):
    return Missing(f"No {run.name} run given (the course's model {run.slot} is "
                   f"{course_model(run.task, run.slot)}). Train it, then pass its folder in "
                   f"--{run.task}-runs:", command(run, data_dir))


def no_records(run, data_dir):
    if run.path is None:
        return no_run(run, data_dir)
    last = run.file(LAST)
    cmd = command(run, data_dir)
    return Missing(f"{run.name}: {run.problem}. " + ("Continue the run:" if last else "Start (or restart) it:"),
                   with_flag(cmd, "--resume", [last]) if last else cmd)


def no_model(run, data_dir):
    """Why the architecture of ``run`` is drawn with its builder's defaults: no run, or no checkpoint."""
    if run.path is None:
        return [no_run(run, data_dir)]
    if run.model_name is None or run.model_config is None:
        return [Missing(f"{run.name} ({run.path}) has no checkpoint to read the model from. Train it:",
                        command(run, data_dir))]
    return []


def unfinished(run):
    planned = run.config.epochs if run.config else None
    if run.records and planned and run.records[-1]["epoch"] < planned and run.file(LAST):
        return Missing(f"{run.name} ({run.path}) stopped after epoch {run.records[-1]['epoch']} of {planned}. "
                       f"Continue it:", with_flag(train_command(run), "--resume", [run.file(LAST)]))
    return None


def data_folder(task, data_dir):
    """(validation folder, labels CSV or None) of ``task`` under ``data_dir`` (a Path or None), or a Missing note."""
    layout = get_task(task).layout
    part, split, archive = layout.folder, layout.val, layout.archive
    if data_dir is None:
        return Missing(f"No --data-dir given: this needs {part}/{split}. Extract the course data and pass "
                       f"--data-dir hw1_data:", f"mkdir -p hw1_data && tar xzf {archive} -C hw1_data")
    folder = data_dir / part / split
    if not folder.is_dir():
        return Missing(f"{folder}: not found. Extract the course data:",
                       f"mkdir -p {data_dir} && tar xzf {archive} -C {data_dir}")
    csv = data_dir / part / layout.labels if layout.labels else None
    return folder, (csv if csv and csv.is_file() else None)


def absent_masks(folder, ids):
    layout = get_task("seg").layout
    return Missing(f"{folder} has no {', '.join(f'{i}{layout.image_suffix} + {i}{layout.mask_suffix}' for i in ids)}; "
                   f"--mask-ids names images of that folder.")
