"""The report's LaTeX compiles whatever its text holds; its HTML escapes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ltexp.report.model import Fmt, Table
from ltexp.report.render import write_html, write_latex
from tests.conftest import system_tool

# what captions, notes and names have held: TeX's specials, maths symbols, other scripts
HOSTILE = r"<b>a_b</b> & 50% #1 $x$ {y} \z ~^ ± − × · ≤ ≥ → … τ γ Σ Δ “q” — 中文 é ü"


def _blocks() -> list[Table]:
    return [
        Table(
            "4.1",
            f"Caption: {HOSTILE}",
            ["Loss", "Balanced", "Tail"],
            [[HOSTILE, "0.5000 [0.4000, 0.6000]", "+0.0100 [-0.0200, +0.0400]"]],
            [f"Note: {HOSTILE}"],
        )
    ]


def test_hostile_text_compiles(tmp_path: Path) -> None:
    pdflatex = system_tool("pdflatex", "texlive-latex-extra")
    write_latex(tmp_path, _blocks(), Fmt(False), notes=[HOSTILE], missing=[HOSTILE])
    done = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    log = (tmp_path / "report.log").read_text(errors="replace")
    assert done.returncode == 0, log[-1500:]
    assert "Missing character" not in log


def test_an_interval_is_set_under_its_value(tmp_path: Path) -> None:
    write_latex(tmp_path, _blocks(), Fmt(False))
    body = (tmp_path / "report_body.tex").read_text()
    assert r"\begin{tabular}[t]{@{}r@{}}0.5000\\\scriptsize [0.4000, 0.6000]\end{tabular}" in body
    assert r"+0.0100\\\scriptsize [-0.0200, +0.0400]" in body
    # the ensembles table's Δ is set as a symbol, not lost as "?"
    assert r"$\Sigma$ $\Delta$" in body


def test_html_escapes_everything(tmp_path: Path) -> None:
    (page,) = write_html(tmp_path, _blocks(), Fmt(False), [HOSTILE], [], [], HOSTILE, HOSTILE)
    text = page.read_text()
    assert "<b>a_b" not in text and "&lt;b&gt;a_b" in text and "中文" in text
    assert text.count("<table>") == 1 and "0.5000 [0.4000, 0.6000]" in text


def test_names_from_users_reach_markdown_as_text(tmp_path: Path) -> None:
    """Issue 39: a hostile references row or variant label landed as raw HTML in report.md."""
    from ltexp.report.render import write_markdown

    hostile = "<script>alert(1)</script> [x](javascript:alert(1)) a|b"
    table = Table("", f"caption {hostile}", ["A", "B"], [[hostile, "0.5 [0.4, 0.6]"]], [hostile])
    (path,) = write_markdown(tmp_path, [table], Fmt(False), [hostile], [], [], hostile, "x")
    md = path.read_text()
    assert "<script>" not in md and "](javascript" not in md
    assert "&lt;script&gt;" in md and "a\\|b" in md
    assert "| 0.5 [0.4, 0.6] |" in md  # an interval's brackets stay as they are


def test_a_hostile_experiment_name_reaches_the_run_description_as_text(
    tmp_path: Path, tracking: str
) -> None:
    import mlflow

    from ltexp import schema
    from ltexp.cli import main

    name = "<script>alert(1)</script>"
    with mlflow.start_run(experiment_id=mlflow.create_experiment(name)):
        mlflow.set_tag(schema.STEP, "evaluate")
        mlflow.log_params(dict.fromkeys(("dataset", "model", "loss", "train_split"), "x"))
        mlflow.log_params({"seed": 1, "tau": 0})
        mlflow.log_metric(schema.test_metric("balanced"), 0.5)
    assert main(["aggregate", "--experiment", name, "--output-dir", str(tmp_path / "r")]) == 0
    (run,) = mlflow.search_runs(
        experiment_names=[name],
        filter_string=f"tags.`{schema.STEP}` = 'aggregate'",
        output_format="list",
    )
    description = run.data.tags[schema.DESCRIPTION_TAG]
    assert "<script>" not in description and "&lt;script&gt;" in description
