"""Command-line overrides checked before Hydra sees them, so a typo ends in one line that names the key.

Hydra reports an unknown config option or key as a multi-line "Could not override" block with a
pointer to ``HYDRA_FULL_ERROR``, and a value of the wrong type surfaces only deep in the run as
``invalid literal for int()``. :func:`check_overrides` catches the common cases first:

- an unknown option of a group (``method=nope``, ``metrics=[nope]``) lists the valid names;
- a key typed without its group (``root=``, ``limit=``) gets the grouped spelling (``dataset.root=``);
- an unknown key lists the close matches;
- a value that must be an integer (``dataset.limit=abc``, ``batch_size=x``) names the key and an example.

Anything it does not recognise (``+new.key=``, ``hydra.*``, sweeps as ``range(...)``) is left to Hydra.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import yaml

GROUPS = ("method", "model", "dataset", "metrics")
# Keys whose value must be an integer (or null where the default is null).
INTEGER_KEYS = {
    "batch_size": False,
    "topk": False,
    "num_workers": False,
    "n_examples": False,
    "dataset.limit": True,
    "dataset.subset_seed": True,
}


@cache
def _conf() -> Any:
    return resources.files("evalcam.conf")


@cache
def group_options(group: str) -> tuple[str, ...]:
    """The options of a config group: the names of ``conf/<group>/*.yaml``."""
    folder = _conf().joinpath(group)
    return tuple(sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")))


@cache
def group_keys(group: str) -> tuple[str, ...]:
    """Every key any option of ``group`` defines at its top level."""
    keys: set[str] = set()
    for option in group_options(group):
        data = yaml.safe_load(_conf().joinpath(group, f"{option}.yaml").read_text()) or {}
        keys.update(data)
    if group == "model":
        keys.add("head")  # set for every model in config.yaml
    return tuple(sorted(keys))


@cache
def top_level_keys() -> tuple[str, ...]:
    """The structured run config's keys (evalcam.schema) and whatever ``config.yaml`` sets besides."""
    from evalcam.schema import top_level_keys as schema_keys

    data = yaml.safe_load(_conf().joinpath("config.yaml").read_text()) or {}
    return tuple(sorted({*data, *schema_keys(), *GROUPS} - {"defaults"}))


def _values(raw: str) -> list[str]:
    """The option names in ``a``, ``a,b`` (a sweep) or ``[a,b]`` (a list)."""
    return [v.strip().strip("'\"") for v in raw.strip().strip("[]").split(",") if v.strip()]


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def check_override(arg: str) -> None:
    """Raise a one-line ValueError for an override that cannot be right (see the module doc)."""
    if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
        return
    key, _, value = arg.partition("=")
    if "(" in value or "$" in value:  # Hydra sweep functions and interpolations
        return
    group, _, rest = key.partition(".")
    if key in GROUPS:
        # A command line selects metrics through conf/metrics files too; reading them spares importing torch.
        valid = group_options(key)
        for option in _values(value):
            if option not in valid and not (key == "method" and option.startswith("pgc/")):
                noun = "metric" if key == "metrics" else key
                raise ValueError(f"unknown {noun} {option!r} in {arg}; valid names: {', '.join(valid)}")
        return
    if not rest and key not in top_level_keys():
        owners = [g for g in ("dataset", "model", "method") if key in group_keys(g)]
        if owners:
            raise ValueError(f"{key}= is not a top-level key; did you mean {owners[0]}.{key}={value}?")
        close = difflib.get_close_matches(key, top_level_keys(), n=3)
        hint = f"did you mean {' or '.join(c + '=' for c in close)}? " if close else ""
        raise ValueError(f"unknown key {key}= in {arg}; {hint}valid keys: {', '.join(top_level_keys())}")
    if group in ("dataset", "model") and rest and "." not in rest and rest not in group_keys(group):
        close = difflib.get_close_matches(rest, group_keys(group), n=3)
        hint = f"did you mean {' or '.join(f'{group}.{c}=' for c in close)}? " if close else ""
        valid = ", ".join(f"{group}.{k}" for k in group_keys(group))
        raise ValueError(f"unknown key {key}= in {arg}; {hint}valid keys: {valid}")
    if key in INTEGER_KEYS:
        nullable = INTEGER_KEYS[key]
        for item in _values(value):
            if not _is_int(item) and not (nullable and item in ("null", "None")):
                also = f" or {key}=null" if nullable else ""
                raise ValueError(f"{key}={item} is not an integer; use e.g. {key}=50{also}")


def check_overrides(args: Sequence[str]) -> None:
    """:func:`check_override` on each argument of ``python -m evalcam run``."""
    for arg in args:
        check_override(arg)
