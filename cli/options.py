"""Typer options derived from a stage's config dataclass: one option per field, its help the field's docstring,
its default the config's. A command declares a parameter annotated with the config class and decorates itself
with `config_options(...)`; the decorator swaps that parameter for the field options and hands the command a
built (and validated) config.

    @app.command()
    @config_options("fit", FitConfig, rename={"num_slots": "slots"})
    def reconstruct(text: str, fit: FitConfig = None) -> None:
        ...  # fit is a FitConfig built from --max-steps, --lr, ..., --slots

Several decorators stack (one per config). Tuple fields are one comma-separated option (--ns 8,16,32);
bools are --flag/--no-flag.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable

import typer


def _help(text: str) -> str:
    return text.replace("[", "\\[")  # rich markup would swallow "[e; m]"


def _tuple_item(tp) -> type | None:
    """float for tuple[float, ...] (a comma-separated option), else None."""
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0]
    return None


def config_options(param: str, cls: type, *, defaults=None, exclude: Iterable[str] = (),
                   rename: dict[str, str] | None = None, short: dict[str, str] | None = None,
                   arguments: Iterable[str] = ()) -> Callable:
    """Decorate a command so that its parameter `param` (a `cls` instance) comes from one CLI option per field.

    defaults: a `cls` instance whose values are the options' defaults (default: the class's own);
    exclude: fields that are not options (they keep their default; the command may `replace` them);
    rename: field -> option name without dashes; short: field -> a short alias like '-o';
    arguments: fields taken as positional arguments."""
    from nar.config import field_docs

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    base = defaults
    rename, short, exclude, arguments = rename or {}, short or {}, set(exclude), set(arguments)
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]

    def default_of(f: dataclasses.Field):
        if base is not None:
            return getattr(base, f.name)
        if f.default is not dataclasses.MISSING:
            return f.default
        return ...  # required

    def option(f: dataclasses.Field) -> tuple[type, object]:
        tp, default, help_ = hints[f.name], default_of(f), _help(docs.get(f.name, ""))
        item = _tuple_item(tp)
        if item is not None:  # a comma-separated list
            tp, default = str, ",".join(str(x) for x in default)
        if f.name in arguments:
            return tp, typer.Argument(default, help=help_, show_default=default is not ...)
        name = rename.get(f.name, f.name).replace("_", "-")
        decls = [f"--{name}/--no-{name}" if tp is bool else f"--{name}", *([short[f.name]] if f.name in short else [])]
        return tp, typer.Option(default, *decls, help=help_)

    def build(values: dict):
        kw = {}
        for f in fields:
            v = values.pop(f.name)
            item = _tuple_item(hints[f.name])
            kw[f.name] = tuple(item(x) for x in str(v).split(",") if x.strip()) if item is not None else v
        return base.replace(**kw) if base is not None else cls(**kw)

    def decorate(command: Callable) -> Callable:
        kw_only = inspect.Parameter.KEYWORD_ONLY
        own = [p.replace(kind=kw_only) for p in inspect.signature(command).parameters.values() if p.name != param]
        extra = [inspect.Parameter(f.name, kw_only, default=d, annotation=tp) for f in fields for tp, d in [option(f)]]
        clash = {p.name for p in own} & {p.name for p in extra}
        if clash:
            raise TypeError(f"{command.__name__}: parameters {sorted(clash)} are also fields of {cls.__name__}")
        # Typer calls with keywords only; the order sets the order of positional arguments and of --help
        args = [p for p in extra if isinstance(p.default, typer.models.ArgumentInfo)]

        @functools.wraps(command)
        def wrapper(**kw):
            kw[param] = build(kw)
            return command(**kw)

        del wrapper.__wrapped__  # typer must read the signature below, not the command's
        wrapper.__signature__ = inspect.Signature([*own, *args, *[p for p in extra if p not in args]])
        command.__annotations__ = {**command.__annotations__, param: cls}  # resolvable even if declared locally
        hints_ = typing.get_type_hints(command)
        wrapper.__annotations__ = {**{k: v for k, v in hints_.items() if k != param},
                                   **{p.name: p.annotation for p in extra}}
        return wrapper

    return decorate
