"""A comparison table (peftds.compare.table.Table) as Markdown, CSV and LaTeX (table.md/.csv/.tex)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from peftds.compare.table import AVG_ALL, Cell, Table, significant
from peftds.files import write_text_atomic

TABLE_MD, TABLE_CSV, TABLE_TEX = "table.md", "table.csv", "table.tex"
T_MARK, BOOT_MARK, UNLEARNED_MARK, TIE_MARK = "†", "‡", "⚠", "="
TITLES = {AVG_ALL: "avg (all tasks)"}


def number(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def pct_text(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}" if v >= 99.5 else f"{v:.3f}"


def p_text(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}" if p >= 0.001 else "<0.001"


def header(t: Table, col_id: str, flag: str) -> str:
    """A column's title, flagged when its task is unlearned (also each metric column of that task)."""
    task = next((c.task for c in t.columns if c.id == col_id), None)
    title = TITLES.get(col_id, col_id)
    return f"{title} {flag}" if task in t.unlearned else title


def cell_parts(t: Table, design: str, col_id: str) -> tuple[str, bool, str]:
    """(text, is best, marks) of a design's cell."""
    c: Cell | None = t.cells[design].get(col_id)
    if c is None:
        return "", False, ""
    text = number(c.mean, t.digits)
    if c.std is not None:
        text += f" ± {number(c.std, t.digits)}"
    if len(c.values) < len(t.seeds):
        text += f" ({len(c.values)})"
    b = t.best.get(col_id)
    if b is not None and design in b.tied:
        return text, True, TIE_MARK
    if b is None or b.best != design:
        return text, False, ""
    if not b.marked:
        return text, True, ""
    marks = (T_MARK if significant(b.p_t, t.alpha) else "") + (BOOT_MARK if significant(b.p_boot, t.alpha) else "")
    return text, True, marks


def p_row(t: Table, col_id: str) -> str:
    b = t.best.get(col_id)
    if b is None or b.second is None:
        return ""
    return f"t {p_text(b.p_t)} · boot {p_text(b.p_boot)}"


def notes(t: Table) -> list[str]:
    seeds = ", ".join(map(str, t.seeds))
    lines = [
        f"Model {t.model}; cells: mean ± std over seeds {seeds} (a count in parentheses: fewer seeds finished; "
        "one seed: no spread); "
        "params %: trainable parameters (task head excluded) over the backbone; best of each column in bold.",
        f"{T_MARK}: the best differs from the second best at p < {t.alpha} (paired t-test over the seeds both "
        "finished), and leads on them; "
        f"{BOOT_MARK}: the same by a paired bootstrap over dev examples ({t.bootstrap} resamples). "
        "Row `p best vs 2nd`: both p-values (two-sided).",
    ]
    if t.unlearned:
        lines.append(
            f"{UNLEARNED_MARK} {', '.join(t.unlearned)}: no design scores above the majority-class baseline of the dev "
            "set (row `majority class`); left out of `avg`. `avg (all tasks)` averages every task: the paper's "
            "averages are over all tasks, so they stand in that column."
        )
        if all(c.task in t.unlearned for c in t.columns if c.task is not None):
            lines.append("`avg` is empty: every task is unlearned, no task is left to average.")
    ties = [c.id for c in t.columns if (b := t.best.get(c.id)) is not None and b.tied]
    if ties:
        lines.append(
            f"{TIE_MARK}: tied for best (equal means; every tied design in bold, none marked significant): "
            + ", ".join(f"{TITLES.get(i, i)} ({', '.join(t.best[i].tied)})" for i in ties)
        )
    behind = [i for i, b in t.best.items() if b.second and not b.tied and not b.leads]
    if behind:
        lines.append(
            "Best by mean but not ahead of the second best on the seeds both finished (the pairs the tests use), "
            f"so not marked significant: {', '.join(TITLES.get(i, i) for i in behind)}."
        )
    mixed = [i for i, b in t.best.items() if b.second and not b.same_seeds]
    if mixed:
        lines.append(
            f"Means over different seed sets (best vs second) in {', '.join(TITLES.get(i, i) for i in mixed)}: "
            "each mean is over its own finished seeds; the tests use only the seeds both finished."
        )
    if t.stale:
        lines.append(
            f"runs.csv also holds {len(t.stale)} run(s) of other settings in this dir (another regime or design "
            "configuration): stale, not in this table."
        )
    lines += [f"Paper: {n}" for n in t.paper.notes]
    return lines


def grid(t: Table, bold: Callable[[str], str], flag: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, design rows, extra rows) as cell texts."""
    ids = [c.id for c in t.columns]
    head = ["design", "params %", *[header(t, i, flag) for i in ids]]
    body = []
    for d in t.designs:
        row = [d, pct_text(t.pct.get(d))]
        for i in ids:
            text, best, marks = cell_parts(t, d, i)
            row.append((bold(text) if best else text) + marks)
        body.append(row)
    extra = []
    if t.majority:
        extra.append(["majority class", "", *[number(t.majority.get(i), t.digits) for i in ids]])
    for name, vals in t.paper.rows.items():
        extra.append([name, "", *[number(vals.get(i), t.digits) for i in ids]])
    extra.append(["p best vs 2nd", "", *[p_row(t, i) for i in ids]])
    return head, body, extra


def to_markdown(t: Table) -> str:
    head, body, extra = grid(t, lambda s: f"**{s}**", UNLEARNED_MARK)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body + extra]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes(t)) + "\n"


def tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$").replace(T_MARK, r"$^\dagger$").replace(BOOT_MARK, r"$^\ddagger$")


def to_latex(t: Table) -> str:
    head, body, extra = grid(t, lambda s: "\x00" + s + "\x01", "(!)")

    def row(cells: list[str]) -> str:
        out = [tex_escape(c).replace("\x00", r"\textbf{").replace("\x01", "}") for c in cells]
        return " & ".join(out) + r" \\"

    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", row(head), r"\midrule"]
    lines += [row(r) for r in body] + [r"\midrule"] + [row(r) for r in extra]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n" + "\n".join(f"% {n}" for n in notes(t)) + "\n"


def to_csv(t: Table) -> str:
    """One row per design (and majority/paper/p rows): per column its mean, std, seed count, best mark."""
    ids = [c.id for c in t.columns]
    fields = ["row", "kind", "params_pct"] + [f"{i}_{k}" for i in ids for k in ("mean", "std", "n", "best")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for d in t.designs:
        r = {"row": d, "kind": "design", "params_pct": t.pct.get(d)}
        for i in ids:
            c = t.cells[d].get(i)
            if c is not None:
                _, best, marks = cell_parts(t, d, i)
                r.update({f"{i}_mean": c.mean, f"{i}_std": c.std, f"{i}_n": len(c.values),
                          f"{i}_best": (("best" + marks) if best else "")})  # fmt: skip
        w.writerow(r)
    if t.majority:
        w.writerow({"row": "majority class", "kind": "baseline", **{f"{i}_mean": v for i, v in t.majority.items()}})
    for name, vals in t.paper.rows.items():
        w.writerow({"row": name, "kind": "paper", **{f"{i}_mean": v for i, v in vals.items()}})
    for kind, attr in (("p_ttest", "p_t"), ("p_bootstrap", "p_boot")):
        w.writerow({"row": f"p best vs 2nd ({kind[2:]})", "kind": kind,
                    **{f"{i}_mean": getattr(b, attr) for i, b in t.best.items() if b.second}})  # fmt: skip
    return buf.getvalue()


def write_tables(t: Table, out_dir: Path) -> str:
    """table.md, table.csv and table.tex into out_dir; returns the Markdown."""
    md = to_markdown(t)
    write_text_atomic(Path(out_dir) / TABLE_MD, md)
    write_text_atomic(Path(out_dir) / TABLE_CSV, to_csv(t))
    write_text_atomic(Path(out_dir) / TABLE_TEX, to_latex(t))
    return md
