"""The `detect { ... }` section: how `netspec predict` reads a detector's raw outputs.

    detect {
        decoder = yolo(reg_max=16, strides=[8, 16, 32])   # a decoder of netspec/detection/
        score = 0.25            # the least class probability a detection keeps
        iou = 0.45              # suppress a box overlapping a better one of its class by more
        max_detections = 100    # per image
    }

Checked at elaboration, like the train section: an unknown decoder or option, or a threshold
out of range, is reported at its spec line.
"""

from __future__ import annotations

from ..errors import Pos, SpecError, did_you_mean
from .train_section import _call, _num, _plain


def validate_detect(settings: list[tuple[str, object, Pos]], pos: Pos) -> dict:
    """Check each setting; a plain dict with the defaults filled in (detection.SETTINGS)."""
    from ..detection import DECODERS, SETTINGS, check_options, decoder_options
    cfg: dict = dict(SETTINGS)
    seen: dict[str, Pos] = {}
    for name, value, p in settings:
        if name in seen:
            raise SpecError(f"detect: '{name}' is set twice", p, notes=[("first set here", seen[name])])
        seen[name] = p
        if name == "decoder":
            # only the decoder named is imported: its keyword defaults are its options
            named = getattr(value, "name", str(_plain(value)))
            table = {d: decoder_options(d) if d == named else {} for d in DECODERS}
            cfg[name] = _call(value, table, "decoder", p, section="detect")
            options = {k: v for k, v in cfg[name].items() if k != "name"}
            problem = check_options(cfg[name]["name"], options)
            if problem:
                raise SpecError(f"detect: decoder '{cfg[name]['name']}': {problem}", p)
        elif name in ("score", "iou"):
            cfg[name] = float(_num(_plain(value), name, p, hi=1.0, section="detect"))
        elif name == "max_detections":
            cfg[name] = _num(_plain(value), name, p, lo=1, integer=True, section="detect")
        else:
            known = ("decoder", *SETTINGS)
            raise SpecError(f"detect: unknown setting '{name}'", p,
                            hint=did_you_mean(name, known) or f"settings: {', '.join(known)}")
    if "decoder" not in cfg:
        raise SpecError("detect: the section needs a decoder", pos,
                        hint=f"e.g. decoder = yolo; decoders: {', '.join(DECODERS)}")
    return cfg
