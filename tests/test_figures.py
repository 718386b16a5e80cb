"""Every figure a doc quotes is one a command writes. docs/figures/README.md lists each file under docs/figures that
README.md, docs/**/*.md or model/default/README.md quotes, with the command that wrote it: a figure nobody can
remake is a claim nobody can check. So this fails when a doc quotes a file that is missing or has no row, and when a
row's command runs a script that does not exist, passes a script a flag it does not define, or neither names its
file nor runs a script that writes that name by default. Pure text: nothing here imports torch or runs a script."""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from itertools import dropwhile, groupby
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
REGISTRY = FIGURES / "README.md"
QUOTE = re.compile(r"figures/([A-Za-z0-9_./-]+\.(?:json|md|png|gif|npz|csv|log))")
SHELL = {"cp", "tee", "jq"}  # what a command may run besides the project's scripts (and `python -c`)


def quotes() -> dict[str, list[str]]:
    """Each quoted figure (relative to docs/figures) -> the 'doc:line's that quote it."""
    docs = [ROOT / "README.md", ROOT / "model/default/README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found: dict[str, list[str]] = {}
    for doc in (d for d in docs if d != REGISTRY):
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in (m for m in QUOTE.finditer(line) if m[1] != "README.md"):  # the list itself
                found.setdefault(match[1], []).append(f"{doc.relative_to(ROOT)}:{number}")
    return found


def registry() -> dict[str, str]:
    """The table's rows: file -> command (a `\\|` in a cell is a pipe, escaped for the Markdown table)."""
    cells = [[c.strip().strip("`").replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:3]]
             for line in REGISTRY.read_text().splitlines() if line.startswith("| `")]
    assert len({file for file, _ in cells}) == len(cells), "a file has two rows"
    return dict(cells)


def scripts(command: str) -> list[tuple[Path | None, list[str]]]:
    """Each part of a command (split at &&, ||, ; and |): the project script it runs and the words after it, or
    None for a shell part (cp, tee, jq, python -c). An AssertionError for a part that is neither."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[tuple[Path | None, list[str]]] = []
    for _, part in filter(lambda g: not g[0], groupby(lexer, lambda w: w in ("&&", "||", ";", "|"))):
        words = list(dropwhile(lambda w: re.fullmatch(r"[A-Z_]+=\S*", w), part))  # OMP_NUM_THREADS=1 python ...
        if words[:2] == ["python", "-m"]:
            found.append((ROOT / (words[2].replace(".", "/") + ".py"), words[3:]))
        elif words[:2] == ["python", "-c"] or words[:1] and words[0] in SHELL:
            found.append((None, []))
        elif words[:1] in (["python"], ["bash"]) and len(words) > 1:
            found.append((ROOT / words[1], words[2:] if words[0] == "python" else []))
        elif words[:2] == ["accelerate", "launch"]:  # accelerate's own options come before the script
            at = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
            assert at, f"no script in {' '.join(words)!r}"
            found.append((ROOT / words[at], words[at + 1:]))
        else:
            raise AssertionError(f"neither a project script nor a shell part: {' '.join(words)!r}")
    return found


@cache
def source(script: Path) -> str:
    """The script's text and that of every project module it imports (one level deep), where its flags live."""
    texts = [script.read_text()]
    for node in ast.walk(ast.parse(texts[0])):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for base in (ROOT / name.replace(".", "/") for name in names):
            texts += [p.read_text() for p in (base.with_name(base.name + ".py"), base / "__init__.py") if p.is_file()]
    return "\n".join(texts)


def defines(script: Path, flag: str) -> bool:
    """The flag's literal is in the script or a module it imports (an add_argument alias is a literal too). For
    flags made as add_argument(f"--{name}") in a loop (studies/redraw_study.py), the name's literal counts."""
    text, name = source(script), flag[2:]
    return any(q + flag + q in text or ('add_argument(f"--{' in text and q + name + q in text) for q in "\"'")


def problems(rows: dict[str, str]) -> list[str]:
    """What is wrong with the rows: missing files, scripts and flags, and commands that do not write their file."""
    found = []
    for file, command in rows.items():
        if not (FIGURES / file).is_file():
            found.append(f"{file}: no such file under docs/figures")
        try:
            runs = scripts(command)
        except AssertionError as err:
            found.append(f"{file}: {err}")
            continue
        for script, words in runs:
            if script and not script.is_file():
                found.append(f"{file}: {script.relative_to(ROOT)} does not exist")
            elif script and script.suffix == ".py":
                found += [f"{file}: {script.relative_to(ROOT)} defines no {w.split('=')[0]}" for w in words
                          if w.startswith("--") and not defines(script, w.split("=")[0])]
        # The command names the file, or runs a script that writes that name (or a sibling of the same stem, as
        # Path.with_suffix writes steps_quality.md next to steps_quality.json) by default.
        named = re.compile(rf"\b{re.escape(Path(file).stem)}\.\w+\b")
        if f"docs/figures/{file}" not in command and not any(
                s and s.is_file() and named.search(s.read_text()) for s, _ in runs):
            found.append(f"{file}: the command neither names docs/figures/{file} nor runs a script that writes it")
    return found


def test_every_quoted_figure_exists_and_has_a_row():
    quoted, rows = quotes(), registry()
    missing = [f"{where}: figures/{file} " + ("has no row in docs/figures/README.md" if (FIGURES / file).is_file()
                                              else "does not exist")
               for file, places in sorted(quoted.items()) if file not in rows or not (FIGURES / file).is_file()
               for where in places]
    assert quoted and rows and not missing, "\n".join(missing)


def test_every_row_names_an_existing_file_and_a_command_that_writes_it():
    assert not (found := problems(registry())), "\n".join(found)


def test_a_broken_row_is_caught():
    rows = {"nope.json": "python -m training.evaluate --json docs/figures/nope.json",
            "walk_study.md": "python -m training.evaluate --no_such_flag 1 --json docs/figures/walk_study.md",
            "walk_study.png": "python studies/no_such_script.py --out docs/figures/walk_study.png",
            "walk_study.json": "python -m studies.redraw_study --faithful_strengths 0.5",
            "redraw_study.md": "rm -rf docs/figures/redraw_study.md"}
    expected = ["nope.json: no such file", "defines no --no_such_flag", "no_such_script.py does not exist",
                "walk_study.json: the command neither", "redraw_study.md: neither a project script nor a shell part"]
    found = problems(rows)
    assert len(found) == len(expected) and all(any(e in f for f in found) for e in expected), found
