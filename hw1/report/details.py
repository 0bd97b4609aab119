"""The implementation-details table of a run: every value read from its config, checkpoint and metrics."""
from hw1.data.masks import CLASS_NAMES, UNKNOWN
from hw1.models.introspect import format_params
from hw1.report.blocks import config_text, minutes, transform_names


def details(run, parameters, summary):
    """``[(setting, value)]`` of a run; ``parameters`` its model's count (None: unknown), ``summary`` what
    :func:`hw1.summary.summarize_run` read of it (None: nothing)."""
    c = run.config
    rows = [("model", run.model_name or (c.model if c else None) or "-"),
            ("model config", config_text(run.model_config))]
    if parameters is not None:
        rows.append(("parameters", f"{format_params(parameters)} ({parameters:,})"))
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
