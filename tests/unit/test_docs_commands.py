"""Every ``bigtrain`` command shown in a ```bash block of the docs parses, and every relative link
resolves (file and anchor), so the English and Chinese docs cannot silently rot when the CLI
changes. Parsing is the CLI's own argparse parser plus its rule for ``key=value`` overrides; the
recipe a command names must exist (a shipped recipe name or a YAML file the page creates)."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from bigtrain.cli.main import build_parser
from bigtrain.config.loader import recipe_names

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [p for p in ROOT.glob("README*.md")] + [p for p in (ROOT / "docs").rglob("*.md")],
)
_BASH = re.compile(r"```bash\n(.*?)```", re.S)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _split_commands(line: str) -> list[list[str]]:
    """Shell words of each bigtrain command in ``line``, also inside quoted strings (ssh "...")."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as e:
        pytest.fail(f"{line!r} is not valid shell: {e}")
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token and set(token) <= set(";&|"):
            while current and re.fullmatch(r"[A-Z_]+=\S*", current[0]):  # env assignments
                current.pop(0)
            if current and re.fullmatch(r"(?:\S*/)?bigtrain", current[0]):
                commands.append(current[1:])
            current = []
            continue
        if "bigtrain " in token:  # a command quoted inside another (ssh host "cd x && ...")
            commands.extend(_split_commands(token))
        current.append(token)
    return commands


def _commands(text: str) -> list[list[str]]:
    """The bigtrain commands of a page's bash blocks, as words after ``bigtrain``."""
    found = []
    for block in _BASH.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            found.extend(_split_commands(line))
    return found


def _cases() -> list[tuple[str, list[str]]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in _commands(p.read_text())]


@pytest.mark.parametrize(
    "page,words", _cases(), ids=lambda v: v[:40] if isinstance(v, str) else " ".join(v)[:60]
)
def test_docs_command_parses(page, words, capsys):
    parser = build_parser()
    command = "bigtrain " + " ".join(words)
    words = ["0" if re.fullmatch(r"\$\w+", w) else w for w in words]  # shell variables: a number
    try:
        args, extra = parser.parse_known_args(words)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{page}: `{command}` does not parse ({e.code}): {err[-1] if err else ''}")
    if "-h" in words or "--help" in words:
        return
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    assert not stray, f"{page}: `{command}`: unknown arguments {stray}"
    if extra:
        assert hasattr(args, "overrides"), f"{page}: `{command}` takes no key=value overrides"
    recipe = getattr(args, "recipe", None)
    if isinstance(recipe, str) and not recipe.endswith((".yaml", ".yml")):
        names = recipe_names(include_tiny=True)
        assert recipe in names, f"{page}: `{command}` names no shipped recipe '{recipe}'"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip()).lower()
    kept = "".join(
        ch for ch in text if ch in " -" or unicodedata.category(ch)[0] in ("L", "N") or ch == "_"
    )
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def _links() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for a, b in _LINK.findall(text):
            target = a or b
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                out.append((page.relative_to(ROOT).as_posix(), target))
    return out


@pytest.mark.parametrize("page,target", _links(), ids=lambda v: v[:60])
def test_docs_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    where = (ROOT / page).parent
    file = (where / path).resolve() if path else ROOT / page
    assert file.exists(), f"{page}: link {target} names a missing file"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), f"{page}: link {target}: no heading '#{anchor}'"


def test_docs_show_commands():
    # the checks above must have something to check
    assert len(_cases()) > 50 and len(_links()) > 20
