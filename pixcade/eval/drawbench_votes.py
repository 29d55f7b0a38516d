"""DrawBench votes: their SQLite store and the per-category preference report.

A vote records which image set was shown as "A" and which as "B" (model names, known
only server-side) and, for each of the two questions, the rater's choice: "A", "B" or
"indifferent". The report gives, per category and model pair, the first model's
preference rate with indifferent counted as half a win, and a 95% Wilson score interval,
as the bars and error bars of Imagen's DrawBench figure.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

QUESTIONS = {
    "fidelity": "Which image set is more faithful to the text?",
    "quality": "Which image set looks better (image quality)?",
}
CHOICES = ("A", "B", "indifferent")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    prompt_index INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    category TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    fidelity TEXT NOT NULL CHECK (fidelity IN ('A', 'B', 'indifferent')),
    quality TEXT NOT NULL CHECK (quality IN ('A', 'B', 'indifferent')),
    created_at TEXT NOT NULL
)
"""


class VoteStore:
    """Votes in one SQLite file; a connection per call, so any server thread may use it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, token: str, prompt_index: int, prompt: str, category: str,
            model_a: str, model_b: str, fidelity: str, quality: str) -> None:
        """Store one vote; a token already voted raises ``sqlite3.IntegrityError``."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as db:
            db.execute(
                "INSERT INTO votes (token, prompt_index, prompt, category, model_a, model_b,"
                " fidelity, quality, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token, prompt_index, prompt, category, model_a, model_b, fidelity, quality, now),
            )

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def counts_per_prompt(self, model_x: str, model_y: str) -> dict[int, int]:
        """How many votes each prompt has for this pair of models (either order)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT prompt_index, COUNT(*) FROM votes WHERE (model_a = ? AND model_b = ?)"
                " OR (model_a = ? AND model_b = ?) GROUP BY prompt_index",
                (model_x, model_y, model_y, model_x),
            ).fetchall()
        return dict(rows)

    def rows(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM votes ORDER BY id")]


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties as halves)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _tally(votes: list[str], first: str) -> dict:
    """``votes``: each vote's winning model name or "indifferent"; counted for ``first``."""
    wins = sum(1 for w in votes if w == first)
    ties = sum(1 for w in votes if w == "indifferent")
    n = len(votes)
    rate = (wins + 0.5 * ties) / n if n else None
    lo, hi = wilson_interval(wins + 0.5 * ties, n)
    return {"n": n, "wins": wins, "losses": n - wins - ties, "indifferent": ties,
            "preference": rate, "ci95": [lo, hi] if n else None}


def build_report(rows: list[dict], model_order: list[str] | None = None) -> dict:
    """Per model pair, question and category: the first model's preference over the second."""
    order = list(model_order or [])
    for r in rows:
        for m in (r["model_a"], r["model_b"]):
            if m not in order:
                order.append(m)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        pair = tuple(sorted((r["model_a"], r["model_b"]), key=order.index))
        groups.setdefault(pair, []).append(r)
    pairs = []
    for (first, second), group in groups.items():
        categories = sorted({r["category"] for r in group})
        questions = {}
        for q in QUESTIONS:
            def winner(r: dict) -> str:
                c = r[q]
                return "indifferent" if c == "indifferent" else r["model_a"] if c == "A" else r["model_b"]

            per = {c: _tally([winner(r) for r in group if r["category"] == c], first) for c in categories}
            questions[q] = {"categories": per, "overall": _tally([winner(r) for r in group], first)}
        pairs.append({"model": first, "versus": second, "n_votes": len(group), "questions": questions})
    return {
        "metric": "drawbench_preference",
        "definition": "preference rate for `model` over `versus`: (wins + 0.5 * indifferent) / votes; "
                      "ci95: Wilson score interval",
        "questions": QUESTIONS,
        "n_votes": len(rows),
        "pairs": pairs,
    }


def report_markdown(report: dict) -> str:
    lines = [f"# DrawBench human preference ({report['n_votes']} votes)", ""]
    if not report["pairs"]:
        lines.append("No votes yet.")
    for pair in report["pairs"]:
        lines += [f"## {pair['model']} vs {pair['versus']}", "",
                  f"Preference rate for **{pair['model']}** (indifferent = half a win), 95% Wilson interval.", "",
                  "| category | votes | fidelity | quality |", "| --- | ---: | --- | --- |"]
        fid, qual = pair["questions"]["fidelity"], pair["questions"]["quality"]
        names = list(fid["categories"]) + ["overall"]
        for name in names:
            f = fid["overall"] if name == "overall" else fid["categories"][name]
            q = qual["overall"] if name == "overall" else qual["categories"][name]
            label = f"**{name}**" if name == "overall" else name
            lines.append(f"| {label} | {f['n']} | {_cell(f)} | {_cell(q)} |")
        lines.append("")
    return "\n".join(lines)


def _cell(t: dict) -> str:
    if not t["n"]:
        return "-"
    lo, hi = t["ci95"]
    return f"{100 * t['preference']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
