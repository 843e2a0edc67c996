"""The documentation matches the code: docs/cli.md lists exactly each command's options, the
README stays a short guide, and every relative link points at a file and heading that exist.

docs/cli.md format (parsed here): one ``## stam`` section for the global options and one
``## stam <command>`` section per command; in each, the rows of the tables whose header starts
with ``option`` name the options in their first cell as backticked names separated by commas,
e.g. ``| `--frames`, `-f` | meaning | default |`` (an on/off pair: `` `--resume`, `--no-resume` ``).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import typer

from conftest import REPO
import stamcli.cli

CLI_DOC = REPO / "docs" / "cli.md"
README_LIMIT = 20 * 1024
IGNORED = {"--help", "-h"}  # every command has them; Click adds them
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def option_names(param) -> set[str]:
    return set(param.opts) | set(param.secondary_opts)


def real_options() -> dict[str, set[str]]:
    """Section title -> option names of the live Typer app ("stam" for the global options)."""
    group = typer.main.get_command(stamcli.cli.app)
    sections = {"stam": set().union(*(option_names(p) for p in group.params if p.param_type_name == "option"))}
    for name, command in group.commands.items():
        sections[f"stam {name}"] = set().union(
            set(), *(option_names(p) for p in command.params if p.param_type_name == "option"))
    return {title: names - IGNORED for title, names in sections.items()}


def documented_options(text: str) -> dict[str, set[str]]:
    """Section title -> option names in the first column of the section's option tables."""
    sections: dict[str, set[str]] = {}
    current = None
    in_table = False
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = set()
            in_table = False
            continue
        if current is None or not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = cells[0].lower() == "option"  # a header row starts an option table
            continue
        if set(cells[0]) <= set("-: "):
            continue  # the separator row
        sections[current].update(re.findall(r"`(-[^`]+)`", cells[0]))
    return sections


def test_cli_reference_lists_exactly_the_options_of_every_command():
    real = real_options()
    documented = {title: names for title, names in documented_options(CLI_DOC.read_text(encoding="utf-8")).items()
                  if title == "stam" or title.startswith("stam ")}
    problems = []
    for title in sorted(real):
        if title not in documented:
            problems.append(f"{title}: no '## {title}' section in docs/cli.md (options: {', '.join(sorted(real[title]))})")
            continue
        missing, extra = real[title] - documented[title], documented[title] - real[title]
        if missing:
            problems.append(f"{title}: missing from docs/cli.md: {', '.join(sorted(missing))}")
        if extra:
            problems.append(f"{title}: in docs/cli.md but not an option: {', '.join(sorted(extra))}")
    for title in sorted(set(documented) - set(real)):
        problems.append(f"{title}: docs/cli.md has a section for a command that does not exist")
    assert not problems, "docs/cli.md does not match the CLI:\n" + "\n".join(problems)


def test_the_cli_reference_parser_reads_names_pairs_and_sections():
    text = ("## stam predict\n\nintro `--not-an-option` in prose\n\n| option | meaning | default |\n| --- | --- | --- |\n"
            "| `--frames`, `-f` | frames | 16 |\n| `--recursive`, `--no-recursive` | walk | on |\n\n"
            "| variable | meaning |\n| --- | --- |\n| `--in-another-table` | no |\n\n## stam models\n")
    assert documented_options(text) == {"stam predict": {"--frames", "-f", "--recursive", "--no-recursive"},
                                        "stam models": set()}


def test_readme_is_a_short_guide():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < README_LIMIT
    assert "pip install -e \".[dev]\"\npython -m pytest -q\n" in readme  # the test command .ci/run runs
    assert "stam download-weights stam_16" in readme and "stam predict ./videos --frames 16 --output tags.csv" in readme


def test_readme_states_the_test_count_pytest_collects():
    """The README's count is what `pytest` collects from the whole suite (counted in a child process,
    so the test holds also when only some files are run)."""
    import subprocess
    import sys

    from conftest import CHILD_ENV

    stated = re.search(r"`pytest` collects (\d+) tests", (REPO / "README.md").read_text(encoding="utf-8"))
    assert stated, "README.md does not say how many tests pytest collects"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    collected = re.search(r"^(\d+) tests? collected", done.stdout, re.M)
    assert collected, done.stdout[-2000:] + done.stderr[-2000:]
    assert int(stated.group(1)) == int(collected.group(1))


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    text = "".join(ch for ch in text if ch in " -" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            base = slug(m.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
    return files + [p for p in [REPO / "benchmarks" / "README.md"] if p.exists()]


def test_every_relative_link_points_at_an_existing_file_and_heading():
    broken = []
    for doc in markdown_files():
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: ...
            file_part, _, anchor = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(REPO)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_slugs_follow_github():
    assert slug("Against the issue's targets") == "against-the-issues-targets"
    assert slug("### `stam predict PATH...`".lstrip("# ")) == "stam-predict-path"
    assert slug("PyAV against OpenCV in `stam predict`") == "pyav-against-opencv-in-stam-predict"
    assert slug("CUDA and suite time") == "cuda-and-suite-time"
