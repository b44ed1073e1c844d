"""The settings a request may give, written once for the REST API, its OpenAPI page and the
web page: names, types, ranges, which task takes which, and how they are read.

A request gives settings as text (query parameters, form fields); :func:`resolve` checks
them against :data:`PARAMETERS` and completes them with the server's defaults
(:class:`ServerDefaults`, from the ``deepspectral serve`` options) into a
:class:`RequestSettings`. A bad value raises :class:`SettingError` (a ``ValueError``
naming the parameter, the value and what is valid: the API answers it with HTTP 400).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from .. import defaults

__all__ = [
    "TASKS",
    "MATTE_OUTPUTS",
    "MATTE_OUTPUT",
    "MAX_EIGENVECTORS",
    "MAX_RADIUS",
    "MAX_RESIZE",
    "Parameter",
    "PARAMETERS",
    "parameters_of",
    "SettingError",
    "ServerDefaults",
    "RequestSettings",
    "resolve",
    "parse_color",
]

#: What the server computes: one REST endpoint each (``POST /api/<task>``).
TASKS = ("eigs", "localize", "segment", "matte", "discover")
#: What ``/api/matte`` returns: the alpha matte (8-bit grey), the RGBA cut-out, or the
#: cut-out composited on a colour or a second photo (RGB).
MATTE_OUTPUTS = ("alpha", "cutout", "composite")
MATTE_OUTPUT = "cutout"
#: Most eigenvectors a request may ask for: bounds what one request costs (the tasks use
#: the second; the eigenvector pictures show a handful).
MAX_EIGENVECTORS = 16
#: Largest guided-filter radius (pixels) a request may ask for: 8 cells of the 1/8 grid,
#: beyond which the matte is only blurrier.
MAX_RADIUS = 64
#: Largest side of MaskCut's square input a request may ask for (``resize``): 64 × 64
#: patches of 16 pixels, a bound on what one request costs.
MAX_RESIZE = 1024
#: Composite colour when ``output=composite`` gives neither a colour nor a second photo:
#: the green of a green screen.
DEFAULT_COLOR = (0, 177, 64)

_DSM_ONLY = "dsm"
_TOKENCUT_ONLY = "tokencut"


class SettingError(ValueError):
    """A setting of a request that cannot be used (the API answers HTTP 400)."""


def _number(kind: type, low: float | None, high: float | None, *, low_open: bool = False, high_open: bool = False):
    noun = "an integer" if kind is int else "a number"
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"expected {noun} in {span}") from None
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value < low or (low_open and value == low)))
        bad = bad or (high is not None and (value > high or (high_open and value == high)))
        if bad:
            raise ValueError(f"expected {noun} in {span}")
        return value

    return parse


def _choice(choices: tuple[str, ...]):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _max_objects(text: str):
    if text == "auto":
        return "auto"
    return _number(int, 1, defaults.AUTO_MAX_OBJECTS)(text)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_color(text: str) -> tuple[int, int, int]:
    """``"R,G,B"`` (0..255 each), ``"#RRGGBB"`` or ``"rgb(R, G, B)"`` / ``"rgba(R, G, B, A)"``
    (what a browser's colour picker may send; the alpha is ignored) → ``(r, g, b)``."""
    text = str(text).strip()
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text)
    if match:
        value = match.group(1)
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    inner = re.fullmatch(r"rgba?\((.*)\)", text)
    parts = (inner.group(1) if inner else text).split(",")
    if inner and len(parts) == 4:
        parts = parts[:3]
    try:
        rgb = tuple(int(round(float(part))) for part in parts)
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or any(not 0 <= v <= 255 for v in rgb):
        raise ValueError("expected R,G,B with values 0..255 or #RRGGBB")
    return rgb  # type: ignore[return-value]


@dataclass(frozen=True)
class Parameter:
    """One setting a request may give.

    Attributes
    ----------
    name : str
        As a query parameter or form field.
    parse : callable
        ``parse(text) -> value``; ``ValueError`` saying what is expected otherwise.
    tasks : tuple of str
        The tasks (:data:`TASKS`) that take it.
    help : str
        One line for the OpenAPI page.
    schema : dict
        Its OpenAPI schema.
    method : str or None
        The only recipe it applies to (``"dsm"``, ``"tokencut"``), or None.
    """

    name: str
    parse: Callable[[str], object]
    tasks: tuple[str, ...]
    help: str
    schema: dict = field(default_factory=dict)
    method: str | None = None


_DECOMPOSING = ("eigs", "localize", "segment", "matte")
_RECIPES = ("eigs", "localize", "segment")  # matte works on the paper's decomposition only
_CUTS = ("eigs", "localize", "segment", "discover")  # TokenCut's graph: its recipe, and MaskCut's cuts

#: Every setting of every task (the defaults are the server's: :class:`ServerDefaults`).
PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "method", _choice(defaults.METHOD_NAMES), _RECIPES,
        "spectral recipe: dsm (Deep Spectral Methods) or tokencut",
        {"type": "string", "enum": list(defaults.METHOD_NAMES)},
    ),
    Parameter(
        "knn_lambda", _number(float, 0, None), _DECOMPOSING,
        "dsm only: weight of the colour (KNN-matting) affinity; 0 uses the features only",
        {"type": "number", "minimum": 0}, _DSM_ONLY,
    ),
    Parameter(
        "n_eigenvectors", _number(int, 2, MAX_EIGENVECTORS), _DECOMPOSING,
        "dsm only: eigenvectors computed, the constant one included",
        {"type": "integer", "minimum": 2, "maximum": MAX_EIGENVECTORS}, _DSM_ONLY,
    ),
    Parameter(
        "tau", _number(float, -1, 1, high_open=True), _CUTS,
        f"tokencut and discover: cosine above which two patches are linked (discover's default: "
        f"MaskCut's {defaults.MASKCUT_TAU})",
        {"type": "number", "minimum": -1, "exclusiveMaximum": 1}, _TOKENCUT_ONLY,
    ),
    Parameter(
        "eps", _number(float, 0, 1, low_open=True, high_open=True), _CUTS,
        "tokencut and discover: weight of the other pairs of patches",
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, _TOKENCUT_ONLY,
    ),
    Parameter(
        "min_score", _number(float, 0, 1), ("localize", "segment", "discover"),
        "report no object (a null box, an empty mask) when the score is below this; discover: stop at "
        f"the first cut scoring below it (default: never, {defaults.AUTO_MIN_SCORE} with max_objects=auto)",
        {"type": "number", "minimum": 0, "maximum": 1},
    ),
    Parameter(
        "max_objects", _max_objects, ("discover",),
        f"objects (cuts) per photo, 1..{defaults.AUTO_MAX_OBJECTS}, or auto: cuts until one scores below "
        f"min_score (default {defaults.MAX_OBJECTS})",
        {"oneOf": [{"type": "integer", "minimum": 1, "maximum": defaults.AUTO_MAX_OBJECTS}, {"type": "string", "enum": ["auto"]}]},
    ),
    Parameter(
        "resize", _number(int, 0, MAX_RESIZE), ("discover",),
        f"resize the photo to S x S first, ignoring its aspect ratio (MaskCut: {defaults.MASKCUT_RESIZE}); "
        f"0 (default): keep the aspect ratio, longest side at most {defaults.DISCOVER_MAX_SIZE}",
        {"type": "integer", "minimum": 0, "maximum": MAX_RESIZE},
    ),
    Parameter(
        "refine", _choice(defaults.REFINEMENTS), ("segment",),
        "refinement of the coarse mask: none, crf (dense CRF) or bilateral (fast bilateral solver); "
        "default: crf for dsm, bilateral for tokencut",
        {"type": "string", "enum": list(defaults.REFINEMENTS)},
    ),
    Parameter(
        "refine", _choice(defaults.DISCOVER_REFINEMENTS), ("discover",),
        "refinement of each instance: crf (MaskCut's dense CRF, the default) or none",
        {"type": "string", "enum": list(defaults.DISCOVER_REFINEMENTS)},
    ),
    Parameter(
        "output", _choice(MATTE_OUTPUTS), ("matte",),
        f"what to return: alpha (8-bit grey PNG), cutout (RGBA PNG) or composite (RGB PNG on 'color' "
        f"or on the photo in the form field 'background'); default {MATTE_OUTPUT}",
        {"type": "string", "enum": list(MATTE_OUTPUTS)},
    ),
    Parameter(
        "color", parse_color, ("matte",),
        "output=composite: the background colour, R,G,B or #RRGGBB (default 0,177,64)",
        {"type": "string", "example": "0,177,64"},
    ),
    Parameter(
        "radius", _number(int, 0, MAX_RADIUS), ("matte",),
        "radius in pixels of the guided filter refining the coarse mask (0: the blocky coarse mask)",
        {"type": "integer", "minimum": 0, "maximum": MAX_RADIUS},
    ),
    Parameter(
        "decontaminate", _boolean, ("matte",),
        "estimate foreground colours where alpha is soft (no halo of the old background)",
        {"type": "boolean"},
    ),
)  # fmt: skip

_BY_NAME = {parameter.name: parameter for parameter in reversed(PARAMETERS)}  # the first of a name


def parameters_of(task: str) -> list[Parameter]:
    """The parameters ``task`` takes, in :data:`PARAMETERS` order."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    return [parameter for parameter in PARAMETERS if task in parameter.tasks]


@dataclass(frozen=True)
class ServerDefaults:
    """The settings a request leaves out (the ``deepspectral serve`` options)."""

    method: str = defaults.METHOD
    knn_lambda: float = defaults.KNN_LAMBDA
    n_eigenvectors: int = defaults.N_EIGENVECTORS
    tau: float = defaults.TOKENCUT_TAU
    eps: float = defaults.TOKENCUT_EPS
    min_score: float = defaults.MIN_SCORE

    def __post_init__(self) -> None:
        if self.method not in defaults.METHOD_NAMES:
            raise ValueError(f"method: expected one of {defaults.METHOD_NAMES}, got {self.method!r}")
        for name in ("knn_lambda", "n_eigenvectors", "tau", "eps", "min_score"):
            try:
                _BY_NAME[name].parse(str(getattr(self, name)))
            except ValueError as error:
                raise ValueError(f"{name}: {error}, got {getattr(self, name)!r}") from None


@dataclass(frozen=True)
class RequestSettings:
    """Every setting of one request, completed with the server's defaults.

    Attributes
    ----------
    task : str
    method : str
        The recipe.
    method_params : dict
        The recipe's parameters other than the paper's (TokenCut: ``tau``, ``eps``).
    knn_lambda, n_eigenvectors : float, int
        The paper's recipe's parameters.
    min_score : float or None
        (None: discover's cuts do not stop on a score.)
    refine : str
        Segment's or discover's refinement (the default of the recipe / MaskCut when not given).
    output : str
        Matte's output (:data:`MATTE_OUTPUTS`).
    color : (r, g, b) or None
        The composite colour, when given.
    radius : int or None
        Matte's guided-filter radius (None: the library's default).
    decontaminate : bool
    max_objects : int or "auto"
        Discover's cuts per photo.
    resize : int
        Discover's square input side (0: the aspect ratio kept).
    """

    task: str
    method: str = defaults.METHOD
    method_params: dict = field(default_factory=dict)
    knn_lambda: float = defaults.KNN_LAMBDA
    n_eigenvectors: int = defaults.N_EIGENVECTORS
    min_score: float | None = defaults.MIN_SCORE
    refine: str = defaults.REFINE[defaults.METHOD]
    output: str = MATTE_OUTPUT
    color: tuple | None = None
    radius: int | None = None
    decontaminate: bool = True
    max_objects: int | str = defaults.MAX_OBJECTS
    resize: int = 0

    def record(self) -> dict:
        """The settings that shaped the result, for the JSON answers."""
        if self.task == "discover":
            return {
                "method": "maskcut", **self.method_params, "max_objects": self.max_objects,
                "min_score": self.min_score, "refine": self.refine, "resize": self.resize,
            }  # fmt: skip
        out = {"method": self.method}
        if self.method == defaults.METHOD:
            out.update(knn_lambda=self.knn_lambda, n_eigenvectors=self.n_eigenvectors)
        else:
            out.update(self.method_params)
        if self.task in ("localize", "segment"):
            out["min_score"] = self.min_score
        if self.task == "segment":
            out["refine"] = self.refine
        return out


def resolve(task: str, given: Mapping[str, str], server: ServerDefaults | None = None) -> RequestSettings:
    """Check the settings ``given`` (text values; an empty value counts as absent) for
    ``task`` and complete them with ``server``'s defaults.

    Raises
    ------
    SettingError
        A name ``task`` does not take, a value that does not parse or is out of range, or
        a parameter of the other recipe (``tau`` with ``method=dsm``); the message names
        the parameter, the value and what is valid.
    """
    server = server or ServerDefaults()
    allowed = {parameter.name: parameter for parameter in parameters_of(task)}
    values: dict = {}
    for name, text in given.items():
        if text is None or str(text).strip() == "":
            continue
        if name not in allowed:
            raise SettingError(f"{name}: not a parameter of /api/{task} (its parameters: {', '.join(allowed)})")
        try:
            values[name] = allowed[name].parse(str(text).strip())
        except ValueError as error:
            raise SettingError(f"{name}: {error}, got {text!r}") from None
    if task == "discover":  # MaskCut repeats TokenCut's cut
        method = "tokencut"
    else:
        method = values.get("method", server.method) if "method" in allowed else defaults.METHOD
    for name in values:
        only = allowed[name].method
        if only is not None and only != method:
            raise SettingError(f"{name}: applies to method {only} only (this request's method is {method})")
    settings = RequestSettings(
        task=task,
        method=method,
        knn_lambda=float(values.get("knn_lambda", server.knn_lambda)),
        n_eigenvectors=int(values.get("n_eigenvectors", server.n_eigenvectors)),
        min_score=float(values.get("min_score", server.min_score)),
        refine=values.get("refine", defaults.DISCOVER_REFINE if task == "discover" else defaults.REFINE[method]),
        output=values.get("output", MATTE_OUTPUT),
        color=values.get("color"),
        radius=values.get("radius"),
        decontaminate=values.get("decontaminate", True),
        max_objects=values.get("max_objects", defaults.MAX_OBJECTS),
        resize=int(values.get("resize", 0)),
    )
    if task == "discover":  # MaskCut's own defaults, not the server's TokenCut ones
        tau, eps = values.get("tau", defaults.MASKCUT_TAU), values.get("eps", defaults.TOKENCUT_EPS)
        return replace(settings, method_params={"tau": float(tau), "eps": float(eps)}, min_score=values.get("min_score"))
    if method != defaults.METHOD:
        settings = replace(settings, method_params={"tau": float(values.get("tau", server.tau)), "eps": float(values.get("eps", server.eps))})
    return settings
