"""The README's result numbers are the committed results' (fgrad/analysis/readme.py), and the
README stays short."""

import shutil
import subprocess
import sys
from pathlib import Path

from fgrad.analysis import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_block_matches_the_committed_results():
    stale = readme.stale_lines(ROOT / "README.md", ROOT / "results")
    assert not stale, "README is stale (run make figures): " + "; ".join(stale[:3])


def test_a_wrong_readme_number_is_caught_naming_its_line(tmp_path):
    copy = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    ratio = readme.headline_rows(ROOT / "results")[-1][2].split(" ")[0]  # e.g. 0.4162
    wrong = text.replace(f"| {ratio} ", "| 0.1234 ", 1)
    assert wrong != text
    copy.write_text(wrong)
    stale = readme.stale_lines(copy, ROOT / "results")
    assert len(stale) == 1 and "0.1234" in stale[0] and ratio in stale[0]
    line = int(stale[0].split(" line ")[1].split(":")[0])
    assert "0.1234" in wrong.split("\n")[line - 1]
    out = subprocess.run([sys.executable, "-m", "fgrad.analysis.readme", "--check", "--readme",
                          str(copy), "--results", str(ROOT / "results")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "0.1234" in out.stderr
    assert readme.write_readme(copy, ROOT / "results") and copy.read_text() == text


def test_readme_without_markers_is_a_one_line_error(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    copy.write_text(copy.read_text().replace(readme.START, ""))
    try:
        readme.stale_lines(copy, ROOT / "results")
    except ValueError as e:
        assert "\n" not in str(e) and "markers" in str(e)
    else:
        raise AssertionError("no error for a README without the results markers")


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
