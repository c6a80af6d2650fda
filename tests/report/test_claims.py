"""Claims as code (issue 38): the grammar refuses what it cannot check in one line, a planted
effect is reproduced, a reversed one contradicted, a null one inconclusive at no more than the
nominal rate of false verdicts, one seed is "not testable", and the report opens with them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltexp.errors import ConfigError
from ltexp.report.build import Grid, ReportInputs, ReportOptions, build_report
from ltexp.report.claims import Claim, check_claims, load_claims
from ltexp.report.correctness import Correctness
from ltexp.statistics import paired_difference
from tests.planted import README_CLAIM, cifar_manifest, plant


@pytest.fixture(scope="module")
def manifest() -> dict:
    return cifar_manifest()


def _write(tmp_path: Path, text: str, name: str = "claims.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _check(study, claims: list[Claim], manifest: dict, grid: dict):
    correctness = Correctness(study.load, manifest)
    frame = study.frame().sort_values("seed")
    cells = frame.groupby(["model", "loss", "train_split"])["run_id"].apply(list).to_dict()
    return check_claims(claims, cells, correctness, grid)


# --- the grammar -------------------------------------------------------------------------------


def test_the_readme_claim_is_read_as_written(tmp_path: Path) -> None:
    (claim,) = load_claims(_write(tmp_path, README_CLAIM))
    assert (claim.id, claim.kind, claim.a, claim.b, claim.metric) == (
        "bs-beats-ce-balanced",
        "better",
        "bs",
        "ce",
        "balanced",
    )
    assert claim.where == {"train_split": ("only", ("lt",))} and claim.direction == 1


def test_the_thesis_claims_ship_and_parse() -> None:
    claims = load_claims("thesis")
    assert {c.kind for c in claims} >= {"best", "tradeoff", "better", "lowest", "steadiest"}
    assert all(c.source.startswith("thesis §") for c in claims)


BAD = {
    "unknown kind": (README_CLAIM.replace("kind: better", "kind: bigger"), "unknown kind 'bigger'"),
    "unknown metric": (
        README_CLAIM.replace("metric: balanced", "metric: top5"),
        "unknown metric 'top5'",
    ),
    "unknown loss": (
        README_CLAIM.replace("a: bs", "a: bsx"),
        "a 'bsx' is neither a loss nor a backbone (did you mean 'bs'?)",
    ),
    "unknown scope": (
        README_CLAIM.replace("train_split: lt", "split: lt"),
        "unknown scope 'split'",
    ),
    "unknown backbone in scope": (
        README_CLAIM.replace("train_split: lt}", "train_split: lt, model: resnet5}"),
        "unknown model 'resnet5' in where (did you mean 'resnet50'?)",
    ),
    "not a mapping": ("- just\n- a list\n", "must be a mapping with a list under 'claims:'"),
    "a key misspelled": (README_CLAIM.replace("    source:", "    sauce:"), "unknown key 'sauce'"),
    "a claim missing b": (README_CLAIM.replace("    b: ce\n", ""), "needs a, b, metric"),
    "mixed axes": (
        README_CLAIM.replace("b: ce", "b: resnet50"),
        "must both be losses or both backbones",
    ),
    "a hostile id": (README_CLAIM.replace("id: bs-beats", "id: <script>bs"), "id must be 1-64"),
    "not YAML": ("claims: [\n", "is not valid YAML"),
    "10,000 claims": (
        "claims:\n" + "".join(f"  - {{id: c{i}}}\n" for i in range(10_000)),
        "holds 10,000 claims, more than the 500",
    ),
    "the same id twice": (
        README_CLAIM + README_CLAIM.split("claims:\n")[1],
        "the id 'bs-beats-ce-balanced' is given twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_claims_file_is_one_line_naming_what_would_be_right(
    tmp_path: Path, case: str
) -> None:
    text, expected = BAD[case]
    with pytest.raises(ConfigError) as err:
        load_claims(_write(tmp_path, text))
    message = str(err.value)
    assert expected in message and "\n" not in message
    if case not in ("not a mapping", "not YAML", "10,000 claims", "the same id twice"):
        assert "claim 1" in message  # names the claim


@pytest.mark.parametrize("what", ["fifo", "folder", "missing", "huge"])
def test_a_claims_path_that_is_no_small_file_is_refused_at_once(tmp_path: Path, what: str) -> None:
    path = tmp_path / "claims.yaml"
    if what == "fifo":
        os.mkfifo(path)
    elif what == "folder":
        path.mkdir()
    elif what == "huge":
        path.write_bytes(b"#" * (5 * 1024 * 1024))
    with pytest.raises(ConfigError, match="claims file"):
        load_claims(str(path))


# --- the verdicts ------------------------------------------------------------------------------

GRID = {"model": ["resnet50"], "loss": ["ce", "bs", "focal"], "train_split": ["lt"]}


def _claim(a: str, b: str, direction: int = 1, kind: str = "better") -> Claim:
    return Claim(f"{a}-{b}", "t", "s", kind, a, "balanced", b, direction=direction)


def test_a_planted_effect_is_reproduced_a_reversed_one_contradicted_a_null_inconclusive(
    manifest: dict,
) -> None:
    effects = {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.3, ("resnet50", "focal"): 0.0}
    study = plant(manifest, effects, seeds=(1, 2, 3))
    claims = [_claim("bs", "ce"), _claim("bs", "ce", -1), _claim("focal", "ce")]
    verdicts = _check(study, claims, manifest, GRID)
    assert [v.verdict for v in verdicts] == ["reproduced", "contradicted", "inconclusive"]
    # the evidence is the paired difference on the planted predictions, recomputed here
    correct = {
        loss: np.stack(
            [
                p["test_balanced_top5"][:, 0] == p["test_balanced_labels"]
                for run, p in sorted(study.predictions.items())
                if f"-{loss}-" in run
            ]
        )
        for loss in ("bs", "ce")
    }
    direct = paired_difference(correct["bs"], correct["ce"])
    (diff,) = verdicts[0].differences
    assert diff.interval.value == pytest.approx(direct.value)
    assert f"{direct.value:+.4f}" in verdicts[0].evidence
    # Holm over the three claims' three differences
    assert diff.p_holm == pytest.approx(min(1.0, 3 * direct.p_value), rel=1e-9) or (
        diff.p_holm >= direct.p_value
    )


def test_best_needs_every_rival_and_one_seed_is_not_testable(manifest: dict) -> None:
    effects = {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.3, ("resnet50", "focal"): 0.15}
    best = Claim("bs-best", "t", "s", "best", "bs", "balanced")
    three = _check(plant(manifest, effects, seeds=(1, 2, 3)), [best], manifest, GRID)
    assert three[0].verdict == "reproduced" and len(three[0].differences) == 2
    one = _check(plant(manifest, effects, seeds=(1,)), [best], manifest, GRID)
    assert one[0].verdict == "inconclusive" and not one[0].testable
    assert one[0].evidence.startswith(
        "as published: yes on the point estimates; not testable with one seed"
    )
    wrong = Claim("focal-best", "t", "s", "best", "focal", "balanced")
    one = _check(plant(manifest, effects, seeds=(1,)), [wrong], manifest, GRID)
    assert one[0].evidence.startswith("as published: no")


def test_a_spread_claim_finds_the_steadier_backbone(manifest: dict) -> None:
    """ConvNeXt-like: the losses barely move it; ResNet-like: they move it by points."""
    effects = {
        **{("steady", loss): 0.0 for loss in ("ce", "bs", "focal")},
        ("shaky", "ce"): -0.4,
        ("shaky", "bs"): 0.0,
        ("shaky", "focal"): 0.4,
    }
    effects = {
        ("resnet50" if m == "shaky" else "convnext_base", lo): v for (m, lo), v in effects.items()
    }
    study = plant(manifest, effects, seeds=(1, 2, 3), models=("resnet50", "convnext_base"))
    claim = Claim("steadiest", "t", "s", "steadiest", "convnext_base", "balanced", over="loss")
    grid = {**GRID, "model": ["resnet50", "convnext_base"]}
    (verdict,) = _check(study, [claim], manifest, grid)
    assert verdict.verdict == "reproduced", verdict.evidence
    reverse = Claim("steadiest", "t", "s", "steadiest", "resnet50", "balanced", over="loss")
    assert _check(study, [reverse], manifest, grid)[0].verdict == "contradicted"


def test_a_users_scope_that_matches_no_cell_is_refused_and_the_thesis_s_is_skipped(
    manifest: dict, tmp_path: Path
) -> None:
    study = plant(manifest, {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.1}, seeds=(1, 2))
    grid = {"model": ["resnet50"], "loss": ["ce", "bs"], "train_split": ["lt"]}
    mine = Claim(
        "x", "t", "s", "better", "bs", "balanced", "ce", where={"model": ("only", ("vit_b16",))}
    )
    with pytest.raises(ConfigError, match=r"claim .x.: its scope .* matches no cell of this study"):
        _check(study, [mine], manifest, grid)
    thesis = load_claims("thesis")
    verdicts = _check(study, thesis, manifest, grid)
    assert all(v.claim.shipped for v in verdicts)
    assert len(verdicts) < len(thesis)  # vit_b16, convnext_base, seql, ldam: not trained


def test_false_verdicts_on_a_null_stay_at_or_under_the_nominal_rate(manifest: dict) -> None:
    """200 planted studies where bs and ce do not differ: "reproduced" or "contradicted" for
    'bs beats ce' is a false verdict."""
    trials, false = 200, 0
    claim = [_claim("bs", "ce")]
    grid = {"model": ["resnet50"], "loss": ["ce", "bs"], "train_split": ["lt"]}
    for trial in range(trials):
        effects = {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.0}
        study = plant(manifest, effects, seeds=(1, 2, 3), rng_seed=1000 + trial)
        false += _check(study, claim, manifest, grid)[0].verdict != "inconclusive"
    assert false / trials <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / trials), false


# --- the report --------------------------------------------------------------------------------


def test_the_report_opens_with_the_claims_and_writes_claims_csv(
    manifest: dict, tmp_path: Path
) -> None:
    effects = {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.3}
    study = plant(manifest, effects, seeds=(1, 2, 3))
    options = ReportOptions(claims=_write(tmp_path, README_CLAIM))
    out = tmp_path / "report"
    report = build_report(
        ReportInputs(study.frame(), manifest, study.load),
        out,
        Grid(["resnet50"], ["ce", "bs"], ["lt"]),
        options,
    )
    frame = pd.read_csv(out / "claims.csv")
    assert list(frame.columns) == ["id", "kind", "verdict", "text", "source", "evidence"]
    assert frame["verdict"].tolist() == ["reproduced"]
    assert [v.verdict for v in report.claims] == ["reproduced"]
    md = (out / "report.md").read_text()
    first_table = md.index("### ")
    assert md[first_table:].startswith("### Claims: what this study says")
    assert "| bs-beats-ce-balanced | reproduced |" in md
    assert "Holm's correction over the 1 differences the claims tested" in md
