"""The flags of hw1's commands: the training scripts' (common ones, then one per model hyperparameter),
TTA, ``KEY=VALUE`` lists, and the numeric rules checked right after parsing."""
import argparse
import ast
import dataclasses
import math

from hw1.errors import UserError


def add_training_args(parser, config_cls):
    """The training script's flags: one per knob of ``config_cls`` (:func:`hw1.config.knob`: the task's
    own first, then data and output, optimisation, runtime), then one per hyperparameter of the
    task's models (:func:`add_model_args`).

    No flag has an argparse default: what the user did not type is absent from the parsed
    namespace, and :func:`hw1.config.resolve` lays the typed flags over the dataclass's defaults
    and the model's recipes, once. The help shows those defaults (a field that defaults to None,
    ``--lr``, ``--epochs``, ... says "the model's recipe").
    """
    from hw1.config import DATA, OPTIMISATION, RUNTIME, TASK_GROUP, knobs

    groups = {TASK_GROUP: parser}
    groups.update({name: parser.add_argument_group(name) for name in (DATA, OPTIMISATION, RUNTIME)})
    order = list(groups)
    types = {f.name: f.type for f in dataclasses.fields(config_cls)}
    for name, k in sorted(knobs(config_cls).items(), key=lambda item: order.index(item[1]["group"])):
        kwargs = {"help": k["help"], **k["flag"]}
        if callable(kwargs.get("choices")):  # asked when the parser is made: models registered since count
            kwargs["choices"] = kwargs["choices"]()
        if "action" not in kwargs:
            kind = _flag_type(types[name])
            if kind is bool:
                kwargs["action"] = "store_true" if config_cls.__dataclass_fields__[name].default is False \
                    else argparse.BooleanOptionalAction
            else:
                kwargs.setdefault("type", kind)
        groups[k["group"]].add_argument("--" + name.replace("_", "-"), **kwargs)
    groups[RUNTIME].add_argument("--print-config", action="store_true",
                                 help="print every value of the run with where it comes from (default, recipe, "
                                      "flag, the CPU's measured fastest) and exit without training; a run logs the "
                                      "same when it starts")
    from hw1.models import get_spec, model_names

    specs = [get_spec(n) for n in model_names(config_cls.task)]
    add_model_args(parser, specs)
    fields = {f.name: f.default for f in dataclasses.fields(config_cls)}

    def recipes_default(dest):  # a field whose default is each model's own: those defaults
        found = [f"{s.name} {s.recipes['default'][dest]}" for s in specs if dest in s.recipes.get("default", {})]
        return ", ".join(found) + (" (its recipe's)" if found else "the model's recipe")

    for action in parser._actions:
        if action.dest in fields and action.help:
            default = fields[action.dest]
            shown = recipes_default(action.dest) if default is None else default
            action.help = action.help.replace("%(default)s", str(shown).replace("%", "%%"))
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return parser


def _flag_type(annotation):
    """The value type of a field's annotation: ``int`` of ``int | None``."""
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return args[0]


def add_model_args(parser, specs):
    """A flag for each hyperparameter of ``specs``: their builders' keyword-only arguments, typed
    by their defaults (``--stem-pool`` / ``--no-stem-pool`` for a bool, the choices of a
    ``Literal``), with each model's default in the help; and ``--model-config KEY=VALUE ...`` for
    any of them. A flag the chosen model does not take is refused when the config is made."""
    from hw1.models.spec import choices_of

    uses = {}
    for spec in specs:
        for name, param in spec.hyperparameters().items():
            uses.setdefault(name, []).append((spec, param))
    g = parser.add_argument_group("model (its builder's arguments; each model has its own defaults)")
    for name, pairs in uses.items():
        param = pairs[0][1]
        text = next((spec.help[name] for spec, _ in pairs if name in spec.help), "")
        defaults = ", ".join(f"{spec.name} {p.default}" for spec, p in pairs)
        kwargs = {"help": f"{text} (default: {defaults})".strip().replace("%", "%%"), "dest": name}
        if isinstance(param.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices_of(param):
            kwargs["choices"] = choices_of(param)
        else:
            kwargs["type"] = type(param.default)
        g.add_argument("--" + name.replace("_", "-"), **kwargs)
    # the help's example: two hyperparameters of these models, with their defaults
    example = " ".join(f"{name}={pairs[0][1].default}" for name, pairs in list(uses.items())[:2])
    g.add_argument("--model-config", nargs="+", action="extend", metavar="KEY=VALUE", dest="model_config_items",
                   help=f"hyperparameters by their builder's names, e.g. {example} (may be repeated)")
    return parser


def add_tta_args(parser, default):
    """``--tta [MODE]`` (alone: flip) and ``--no-tta``, into ``tta``: a mode of
    :data:`hw1.engine.TTA_MODES` or None (``default`` says what None means)."""
    modes = ("none", "flip", "d4", "crops")  # hw1.engine.TTA_MODES, without importing torch for --help
    parser.add_argument("--tta", nargs="?", const="flip", choices=modes, default=None, metavar="MODE",
                        help="test-time augmentation: flip (the mirror image, what --tta alone means), d4 "
                             "(the 8 turns and mirrors of a square image) or crops (the image and its mirror, "
                             f"each also moved a pixel both ways), averaged (default: {default})")
    parser.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="no test-time augmentation")
    return parser


def parse_key_values(items, flag="--model-config"):
    """``{key: value}`` of ``KEY=VALUE`` strings, each value a Python literal or else a word."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item}: expected KEY=VALUE, e.g. depth=40")
        key = key.replace("-", "_")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare word such as variant=convnext_small
        if key in values and values[key] != value:  # the same setting twice: no silent winner
            raise UserError(f"{flag}: {key} given twice, {values[key]!r} and {value!r}; give it once")
        values[key] = value
    return values


def split_hyperparameters(typed, specs):
    """(the typed flags without the hyperparameters, the hyperparameters) of a parsed namespace's dict."""
    names = {n for spec in specs for n in spec.hyperparameters()}
    hyper = {k: typed.pop(k) for k in list(typed) if k in names}
    hyper = {k: v for k, v in hyper.items() if v is not None}  # a flag with a None default, not typed
    items = parse_key_values(typed.pop("model_config_items", None) or [])
    for key, value in items.items():
        if key in hyper and hyper[key] != value:  # a flag and --model-config disagree: no silent winner
            raise UserError(f"--{key.replace('_', '-')} {hyper[key]} and --model-config {key}={value!r} disagree; "
                            "give one")
    return typed, {**hyper, **items}


def check_numbers(args, rules):
    """A one-line :class:`UserError` for the first numeric flag of ``args`` that breaks its rule.

    ``rules`` maps an argparse dest to ``(test, what the value must be)``; an unset (None) value
    passes, nan and inf never do, and each value of a list flag is checked. Run right after
    parsing, before any file is read or written.
    """
    for dest, (ok, must) in rules.items():
        value = getattr(args, dest, None)
        for v in value if isinstance(value, list) else [] if value is None else [value]:
            if (isinstance(v, float) and not math.isfinite(v)) or not ok(v):
                raise UserError(f"--{dest.replace('_', '-')} {v}: must be {must}")
    return args
