"""Training-data selection by rule: image-quality scores and clinical / imaging fields.

A rule is a small boolean expression over per-case fields, parsed here (never ``eval``)::

    quality>=-0.5
    motion<=1.0 and center!=ISPY1
    (center in (DUKE, NACT) or quality > 0) and not field_strength == 3
    density is missing

Comparisons: ``< <= > >= == = !=``, ``FIELD in (V, ...)``, ``FIELD is missing`` /
``FIELD is not missing``; combined with ``and``, ``or``, ``not`` and parentheses. Text values
compare case-insensitively and may be quoted. A comparison with a missing value is false (also
``!=``), as in SQL; ``is missing`` asks for it explicitly.

``drop_worst`` removes the cases with the lowest ``quality`` composite (data.quality; an
unscorable case counts as the worst): ``"20%"`` of the cases or a count ``"5"``, overall or per
group of a field (``by="center"``: 20 % of each center).

Fields: the quality scores (:data:`QUALITY_FIELDS`, computed from the images and cached) and the
record fields (:data:`RECORD_FIELDS`, from the case's JSON).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.errors import UserError

QUALITY_FIELDS = ("snr", "cnr", "motion", "ghosting", "blur", "quality")   # data.quality.COLUMNS


def _first_post(case):
    t = case.acquisition.acquisition_times
    return float(t[1]) if t and len(t) > 1 and t[1] is not None else None


# name -> (kind, getter); kind "num" or "text"
RECORD_FIELDS = {
    "center": ("text", lambda c: c.center),
    "patient_id": ("text", lambda c: c.patient_id),
    "age": ("num", lambda c: c.clinical.age),
    "menopause": ("text", lambda c: None if c.clinical.menopause == "unknown" else c.clinical.menopause),
    "density": ("text", lambda c: c.clinical.density),
    "subtype": ("text", lambda c: c.clinical.subtype),
    "pcr": ("num", lambda c: c.clinical.pcr),
    "manufacturer": ("text", lambda c: c.acquisition.manufacturer),
    "model": ("text", lambda c: c.acquisition.model),
    "site": ("text", lambda c: c.acquisition.site),
    "field_strength": ("num", lambda c: c.acquisition.field_strength),
    "bilateral": ("num", lambda c: None if c.acquisition.bilateral is None else int(c.acquisition.bilateral)),
    "n_phases": ("num", lambda c: c.n_phases),
    "first_post_s": ("num", _first_post),
}
FIELDS = {**{k: "num" for k in QUALITY_FIELDS}, **{k: kind for k, (kind, _) in RECORD_FIELDS.items()}}
KEYWORDS = {"and", "or", "not", "in", "is", "missing"}
_TOKEN = re.compile(r"""\s*(?:(?P<op><=|>=|==|!=|<|>|=)|(?P<paren>[(),])|"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'"""
                    r"""|(?P<word>[^\s()<>=!,"']+))""")


# ----------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Rule:
    """A parsed selection rule: ``evaluate(values)`` with ``values`` a dict field -> value."""

    text: str
    tree: tuple

    @property
    def fields(self) -> set[str]:
        out: set[str] = set()

        def walk(node):
            if node[0] in ("and", "or"):
                walk(node[1]), walk(node[2])
            elif node[0] == "not":
                walk(node[1])
            else:
                out.add(node[1])
        walk(self.tree)
        return out

    def evaluate(self, values: dict) -> bool:
        return _eval(self.tree, values)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UserError(f"--select {text!r}: cannot read {text[pos:].strip()!r}")
        pos = m.end()
        if m.group("op"):
            out.append(("op", "==" if m.group("op") == "=" else m.group("op")))
        elif m.group("paren"):
            out.append((m.group("paren"), m.group("paren")))
        elif m.group("dq") is not None or m.group("sq") is not None:
            out.append(("str", m.group("dq") if m.group("dq") is not None else m.group("sq")))
        else:
            w = m.group("word")
            out.append(("kw", w.lower()) if w.lower() in KEYWORDS else ("word", w))
    return out


def parse_rule(text: str) -> Rule:
    """Parse a rule; unknown fields, type mismatches and syntax errors are one-line UserErrors."""
    if not str(text).strip():
        raise UserError("--select: empty rule")
    toks = _tokens(str(text))
    pos = 0

    def err(msg):
        raise UserError(f"--select {text!r}: {msg}")

    def found(t):
        return "the end of the rule" if t[0] == "end" else repr(t[1])

    def peek():
        return toks[pos] if pos < len(toks) else ("end", "")

    def take(kind=None, value=None):
        nonlocal pos
        t = peek()
        if (kind and t[0] != kind) or (value and t[1] != value):
            err(f"expected {value or kind}, found {found(t)}")
        pos += 1
        return t

    def value(field):
        t = peek()
        if t[0] not in ("word", "str"):
            err(f"expected a value after {field!r}, found {found(t)}")
        take()
        if FIELDS[field] == "num":
            try:
                v = float(t[1])
            except ValueError:
                err(f"{field} is a number, got {t[1]!r}")
            if not math.isfinite(v):
                err(f"{field}: {t[1]!r} is not a finite number")
            return v
        return t[1]

    def atom():
        t = peek()
        if t[0] == "(":
            take("(")
            node = expr()
            take(")")
            return node
        if t[0] != "word":
            err(f"expected a field name, found {found(t)}")
        field = take()[1].lower()
        if field not in FIELDS:
            err(f"unknown field {field!r}; known fields: {', '.join(FIELDS)}")
        t = peek()
        if t == ("kw", "in"):
            take()
            take("(")
            vals = [value(field)]
            while peek()[0] == ",":
                take(",")
                vals.append(value(field))
            take(")")
            return ("in", field, tuple(vals))
        if t == ("kw", "is"):
            take()
            neg = peek() == ("kw", "not")
            if neg:
                take()
            take("kw", "missing")
            return ("present" if neg else "missing", field, None)
        if t[0] != "op":
            err(f"expected a comparison after {field!r} (< <= > >= == != in, is missing), found {found(t)}")
        op = take()[1]
        return (op, field, value(field))

    def unary():
        if peek() == ("kw", "not"):
            take()
            return ("not", unary())
        return atom()

    def conj():
        node = unary()
        while peek() == ("kw", "and"):
            take()
            node = ("and", node, unary())
        return node

    def expr():
        node = conj()
        while peek() == ("kw", "or"):
            take()
            node = ("or", node, conj())
        return node

    tree = expr()
    if pos != len(toks):
        err(f"unexpected {toks[pos][1]!r}")
    return Rule(str(text).strip(), tree)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cmp(op: str, a, b) -> bool:
    if isinstance(b, str):
        a, b = str(a).lower(), b.lower()
    else:
        a = float(a)
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _eval(node, values) -> bool:
    kind = node[0]
    if kind == "and":
        return _eval(node[1], values) and _eval(node[2], values)
    if kind == "or":
        return _eval(node[1], values) or _eval(node[2], values)
    if kind == "not":
        return not _eval(node[1], values)
    v = values.get(node[1])
    if kind == "missing":
        return _missing(v)
    if kind == "present":
        return not _missing(v)
    if _missing(v):
        return False
    if kind == "in":
        return any(_cmp("==", v, x) for x in node[2])
    return _cmp(kind, v, node[2])


# ----------------------------------------------------------------------------- drop-worst
def parse_drop(text: str | None) -> tuple[str, float] | None:
    """``"20%"`` -> ("fraction", 0.2); ``"5"`` -> ("count", 5); None -> None."""
    if text is None:
        return None
    s = str(text).strip()
    try:
        if s.endswith("%"):
            p = float(s[:-1])
            if not 0 <= p < 100:
                raise ValueError
            return ("fraction", p / 100.0)
        n = int(s)
        if n < 0:
            raise ValueError
        return ("count", float(n))
    except ValueError:
        raise UserError(f"--drop-worst {text!r}: expected a percentage below 100 like 20% or a "
                        "count of cases like 5") from None


def check_by(by: str | None) -> str | None:
    if by is None or by == "all":
        return None
    if by not in RECORD_FIELDS or RECORD_FIELDS[by][0] != "text":
        raise UserError(f"--drop-worst-by {by!r}: choose 'all' or a text field: "
                        f"{', '.join(k for k, (kind, _) in RECORD_FIELDS.items() if kind == 'text' and k != 'patient_id')}")
    return by


def worst(rows: list[dict], drop: tuple[str, float], by: str | None) -> set[str]:
    """Ids of the cases to drop: the lowest ``quality`` within each group (NaN first; ties by id)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get(by) if by else None, []).append(r)
    out: set[str] = set()
    for members in groups.values():
        kind, amount = drop
        # floor: "20 %" of 7 cases drops 1 (never more than asked for)
        n = int(math.floor(amount * len(members) + 1e-9)) if kind == "fraction" else int(amount)
        n = min(n, len(members))

        def key(r):
            q = r.get("quality")
            return (0, 0.0, r["patient_id"]) if _missing(q) else (1, float(q), r["patient_id"])
        out.update(r["patient_id"] for r in sorted(members, key=key)[:n])
    return out


# ----------------------------------------------------------------------------- applying
def case_values(case, scores: dict | None) -> dict:
    """Every field of ``case`` (quality fields from ``scores``, a row of data.quality)."""
    vals = {k: getter(case) for k, (_, getter) in RECORD_FIELDS.items()}
    for k in QUALITY_FIELDS:
        vals[k] = None if scores is None else scores.get(k)
    return vals


def needs_quality(rule: Rule | None, drop) -> bool:
    return drop is not None or (rule is not None and bool(rule.fields & set(QUALITY_FIELDS)))


@dataclass
class Outcome:
    """What a selection kept and why the others went (id -> reason)."""

    kept: list
    dropped: dict[str, str]
    values: dict[str, dict]


def apply(cases, rule: Rule | None, drop, by: str | None, scores: dict[str, dict] | None) -> Outcome:
    """Keep the cases that satisfy ``rule``, then drop the worst ``drop`` of those by quality."""
    values = {c.patient_id: case_values(c, (scores or {}).get(c.patient_id)) for c in cases}
    dropped: dict[str, str] = {}
    kept = []
    for c in cases:
        if rule is not None and not rule.evaluate(values[c.patient_id]):
            dropped[c.patient_id] = f"rule: not ({rule.text})"
        else:
            kept.append(c)
    if drop is not None:
        gone = worst([{"patient_id": c.patient_id, "quality": values[c.patient_id]["quality"],
                       **({by: values[c.patient_id][by]} if by else {})} for c in kept], drop, by)
        q = {i: values[i]["quality"] for i in gone}
        for i in sorted(gone):
            dropped[i] = "drop-worst: quality " + ("not computable" if _missing(q[i]) else f"{q[i]:.3f}")
        kept = [c for c in kept if c.patient_id not in gone]
    return Outcome(kept, dropped, values)


def count_table(stages: list[tuple[str, list]]) -> tuple[list[str], list[list]]:
    """Per-center case counts after each named stage: header and rows (one per center + total)."""
    centers = sorted({c.center for _, cases in stages for c in cases})
    header = ["center"] + [name for name, _ in stages]
    rows = [[k] + [sum(c.center == k for c in cases) for _, cases in stages] for k in centers]
    rows.append(["total"] + [len(cases) for _, cases in stages])
    return header, rows


def format_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header)] + [line(r) for r in rows])
