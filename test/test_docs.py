"""README.md and docs/*.md work on a fresh clone: every relative link (and its #anchor) resolves, every
`python -m ocelot_algo <command>` names a real command, and every --option given to it is one that command takes."""
import functools
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
MODULE_COMMAND = re.compile(r"-m\s+ocelot_algo(?:\s+([^\s\\]+))?")
PROCESS_COMMAND = re.compile(r"(?<![\w/.-])process\.py\b")


def commands_of_project() -> dict:
    from ocelot_algo.__main__ import COMMANDS
    return COMMANDS


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case; letters, digits, `_`, `-` and spaces kept (everything else, e.g.
    `:`, `+`, `.`, `(`, `≥`, `–`, dropped); each space becomes `-`."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def headings(markdown: str) -> set[str]:
    """The anchors of a document's headings (outside code blocks), with GitHub's -1, -2 for repeats."""
    anchors, seen = set(), {}
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_problems(document: Path, root: Path = ROOT) -> list[str]:
    """Relative links whose file does not exist or whose #anchor is no heading of it."""
    text = document.read_text()
    prose = INLINE_CODE.sub("code", FENCE.sub("", text))
    problems = []
    for target in LINK.findall(prose):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            problems.append(f"{document.name}: {target}: no such file")
        elif not resolved.is_relative_to(root):
            problems.append(f"{document.name}: {target}: outside the repository")
        elif anchor:
            if resolved.suffix != ".md":
                problems.append(f"{document.name}: {target}: an anchor into a file that is not Markdown")
            elif anchor not in headings(resolved.read_text()):
                problems.append(f"{document.name}: {target}: no heading with that anchor")
    return problems


def commands_in(markdown: str) -> list[str]:
    """Each command line of the code blocks (continuation lines joined, `# comments` dropped) and each inline code
    span, split at `&&`, `||`, `;` and `|`."""
    commands = []
    for block in FENCE.findall(markdown):
        body = block.split("\n", 1)[1].rsplit("\n", 1)[0]
        for line in body.replace("\\\n", " ").splitlines():
            commands.append(re.sub(r"(^|\s)#.*", "", line))
    commands += INLINE_CODE.findall(FENCE.sub("", markdown))
    return [part for command in commands for part in re.split(r"&&|\|\||;|\|", command) if part.strip()]


def invocations(command: str, known: dict) -> list[tuple[str, list[str]]]:
    """(subcommand, options) named by a command: `... -m ocelot_algo SUB --opt ...`, `process.py --opt ...` (the same
    as `predict`), or a bare `SUB --opt ...` as the training-time table writes its commands."""
    found = []
    match = MODULE_COMMAND.search(command)
    if match and match.group(1) is not None:
        found.append((match.group(1), OPTION.findall(command[match.end():])))
    elif PROCESS_COMMAND.search(command):
        found.append(("predict", OPTION.findall(command[PROCESS_COMMAND.search(command).end():])))
    else:
        bare = re.match(r"\s*([a-z][\w-]*)\s+--", command)
        if bare and bare.group(1) in known:
            found.append((bare.group(1), OPTION.findall(command[bare.end(1):])))
    return found


@functools.cache
def options_of(subcommand: str) -> frozenset[str]:
    done = subprocess.run([sys.executable, "-m", "ocelot_algo", subcommand, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{subcommand} --help: {done.stderr}"
    return frozenset(OPTION.findall(done.stdout))


def command_problems(markdown: str, name: str, known: dict, options=options_of) -> list[str]:
    problems = []
    for command in commands_in(markdown):
        for subcommand, given in invocations(command, known):
            if subcommand not in known:
                problems.append(f"{name}: `{command.strip()}`: no command {subcommand!r}")
                continue
            unknown = sorted(set(given) - options(subcommand))
            if unknown:
                problems.append(f"{name}: `{command.strip()}`: {subcommand} takes no {', '.join(unknown)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    assert link_problems(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_option_exists(document):
    assert command_problems(document.read_text(), document.name, commands_of_project()) == []


def test_the_documents_name_commands_at_all():
    """The checks above see the commands (a parser that found none would pass everything)."""
    text = "\n".join(d.read_text() for d in DOCUMENTS)
    named = {sub for command in commands_in(text) for sub, _ in invocations(command, commands_of_project())}
    assert {"predict", "train", "ensemble", "evaluate", "overlay", "bench", "make-sample"} <= named


def test_the_checks_find_broken_links_and_unknown_commands_and_options(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Speed: 2× faster (GPU)\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#speed-2-faster-gpu) [ok](#page) [web](https://example.org/x)\n"
                    "[gone](missing.md) [bad anchor](other.md#speed) ![picture](nothing.png) [self](#nope)\n"
                    "```bash\n# [not a link](nowhere.md)\n```\n")
    assert link_problems(page, root=tmp_path) == [f"page.md: {t}" for t in (
        "missing.md: no such file", "other.md#speed: no heading with that anchor",
        "nothing.png: no such file", "#nope: no heading with that anchor")]
    known = {"train": None, "predict": None}
    options = {"train": frozenset({"--fold", "--out"}), "predict": frozenset({"--input"})}.__getitem__
    markdown = ("```bash\npython -m ocelot_algo train --fold 0 \\\n    --folds 3   # --out is fine\n"
                "python -m ocelot_algo trian --fold 0\npython process.py --input x --ouput y\n```\n"
                "Inline: `train --fold 1 --out r` and `train --outt r`, and `python -m ocelot_algo` alone.\n")
    assert command_problems(markdown, "m", known, options) == [
        "m: `python -m ocelot_algo train --fold 0      --folds 3`: train takes no --folds",
        "m: `python -m ocelot_algo trian --fold 0`: no command 'trian'",
        "m: `python process.py --input x --ouput y`: predict takes no --ouput",
        "m: `train --outt r`: train takes no --outt"]


def test_github_slugs():
    assert github_slug("Not reached: mF1 ≥ 0.72") == "not-reached-mf1--072"
    assert github_slug("The tissue branch: +0.012 mF1 in the shipped ensemble (goal +0.04, not reached)") == \
        "the-tissue-branch-0012-mf1-in-the-shipped-ensemble-goal-004-not-reached"
    assert github_slug("Training time (2 CPU cores, AMD EPYC)") == "training-time-2-cpu-cores-amd-epyc"
    assert headings("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_the_readme_runs_the_tests_as_ci_does():
    """.ci/run's TEST_CMD must be the README's "run the tests" command."""
    test_command = re.search(r'^TEST_CMD="([^"]+)"', (ROOT / ".ci" / "run").read_text(), re.M).group(1)
    assert re.search(rf"^{re.escape(test_command)}\s+#", (ROOT / "README.md").read_text(), re.M)


def test_the_readme_is_short_and_its_pictures_small():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s#]+)", FENCE.sub("", readme))
    assert pictures
    for picture in pictures:
        path = ROOT / picture
        assert path.parent in (ROOT / "docs", ROOT / "weights" / "report"), picture
        assert path.stat().st_size < 400_000, picture
