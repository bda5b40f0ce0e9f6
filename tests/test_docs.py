"""The docs stay true: links and anchors resolve, demo numbers come from one file, method pages share their
sections, the README's recipe validates, and notebook prose states no default the code does not have."""

import importlib
import importlib.util
import math
import os
import subprocess
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
import yaml

from porover.judges import DEFAULT_JUDGE, JUDGES
from porover.run_file import STAGE_TYPES, load_run_params, stage_type

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), ROOT / "outputs" / "README.md",
         ROOT / "porover" / "data" / "README.md"]
METHOD_PAGES = sorted((DOCS / "methods").glob("*.md"))
METHOD_SECTIONS = ["What it does", "How the workbench runs it", "What is reconstruction", "Parameters", "Demo numbers"]

_spec = importlib.util.spec_from_file_location("demo_numbers", ROOT / "benchmarks" / "demo_numbers.py")
demo_numbers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_numbers)


# --- links and anchors --------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """Markdown without code blocks and inline code (links there are examples, not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(page: Path) -> list[str]:
    """Relative links whose file or heading anchor does not exist; absolute links that are not well-formed URLs."""
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        where = f"{page.relative_to(ROOT)}: ({target})"
        url = urlparse(target)
        if url.scheme in ("http", "https"):
            if not url.netloc or "." not in url.netloc or " " in target:
                problems.append(f"{where}: not a well-formed URL")
            continue
        if url.scheme:
            problems.append(f"{where}: unexpected scheme {url.scheme!r}")
            continue
        file = (page.parent / unquote(url.path)).resolve() if url.path else page
        if not file.exists():
            problems.append(f"{where}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif url.fragment:
            if file.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif url.fragment not in anchors(file):
                problems.append(f"{where}: no heading #{url.fragment} in {file.relative_to(ROOT)}")
    return problems


def test_slugs_follow_github():
    assert slug("Re-running: like a build system") == "re-running-like-a-build-system"
    assert slug("The `mosr` stage") == "the-mosr-stage"
    assert slug("MOSR's boundary finding") == "mosrs-boundary-finding"
    assert slug("Validation against human labels, on seen and unseen models") == \
        "validation-against-human-labels-on-seen-and-unseen-models"
    assert slug("Training: SFT and preference optimization") == "training-sft-and-preference-optimization"


def test_the_link_check_finds_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section) [bad file](missing.md) [bad anchor](other.md#nope) [self](#top)\n"
                    "[url](https://example.org/x) [bad url](https://localhost) `[in code](missing2.md)`\n"
                    "```\n[in a fence](missing3.md)\n```\n# Top\n")
    problems = link_problems(page)
    assert len(problems) == 3, problems
    assert any("missing.md" in p for p in problems) and any("#nope" in p for p in problems)
    assert any("localhost" in p for p in problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(page):
    assert link_problems(page) == []


def test_every_docs_page_is_reachable_from_the_index():
    linked = {(DOCS / target.split("#")[0]).resolve() for target in LINK.findall(prose((DOCS / "index.md").read_text()))}
    linked |= {(ROOT / target.split("#")[0]).resolve() for target in LINK.findall(prose((ROOT / "README.md").read_text()))}
    assert [p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.resolve() not in linked and p.name != "index.md"] == []


def test_the_docs_build_as_a_static_site_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(site)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, "mkdocs (the dev extra; `make venv`) failed:\n" + result.stderr[-3000:]
    assert (site / "methods" / "dro" / "index.html").exists() and (site / "demo_results.yaml").exists()


# --- demo numbers from one place ------------------------------------------------------------------------------

def test_every_demo_block_is_rendered_from_the_results_file():
    data = demo_numbers.load()
    stale = [str(page.relative_to(ROOT)) for page in demo_numbers.doc_pages()
             if demo_numbers.rendered(page.read_text(), data) != page.read_text()]
    assert stale == [], "re-render with: python benchmarks/demo_numbers.py --write-docs"
    blocks = [m for page in demo_numbers.doc_pages() for m in demo_numbers.BLOCK.finditer(page.read_text())]
    assert {m.group("kind") for m in blocks} == set(demo_numbers.RENDERERS)  # every kind of block is in use
    opening = sum(prose(page.read_text()).count("<!-- demo:") for page in demo_numbers.doc_pages())
    assert opening == len(blocks), "a <!-- demo:... --> marker without its <!-- /demo -->"


def test_a_block_that_drifts_from_the_results_file_is_caught():
    data = demo_numbers.load()
    page = "x\n<!-- demo:arms evaluate_base -->\n" + demo_numbers.render("arms", " evaluate_base", data) + "<!-- /demo -->\n"
    assert demo_numbers.rendered(page, data) == page
    edited = page.replace("| base |", "| base (edited) |")
    assert demo_numbers.rendered(edited, data) != edited
    with pytest.raises(KeyError, match="no arm evaluate_nothing"):
        demo_numbers.rendered("<!-- demo:arms evaluate_nothing -->\n<!-- /demo -->", data)


def test_demo_numbers_are_collected_from_a_run_folder(tmp_path):
    import json

    run = tmp_path / "demo"
    (run / "evaluate_base").mkdir(parents=True)
    group = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 10}  # noqa: E731
    metrics = {"overall": {"safety": group(0.5), "usefulness": group(0.8), "f1": group(0.615), "n": 20},
               "by_benchmark": {"xstest": {"safety": group(0.4), "usefulness": group(0.9)},
                                "or_bench_toxic": {"safety": group(0.6), "usefulness": {"value": None}}}}
    (run / "evaluate_base" / "metrics.json").write_text(json.dumps(metrics))
    (run / "manifest.json").write_text(json.dumps({"git_commit": "abcdef0123", "stages": {
        "evaluate_base": {"type": "evaluate", "status": "finished", "wall_seconds": 61.4, "peak_rss_mib": 1331.2},
        "sft": {"type": "sft", "status": "finished", "wall_seconds": 100, "peak_rss_mib": 2048}}}))
    data = demo_numbers.collect(run, {"arms": [{"stage": "evaluate_base", "label": "base"}],
                                      "stages": {"sft": {"note": "full"}}})
    arm = data["arms"][0]
    assert arm["label"] == "base" and arm["safety"] == [50.0, 40, 60] and arm["f1"][0] == 61.5
    assert arm["benchmarks"] == {"xstest": {"safety": 40.0, "usefulness": 90.0}, "or_bench_toxic": {"safety": 60.0}}
    assert data["stages"] == {"evaluate_base": {"seconds": 61, "peak_gib": 1.3}, "sft": {"seconds": 100, "peak_gib": 2.0, "note": "full"}}
    assert data["run"]["commit"] == "abcdef0" and data["run"]["wall_s"] == 161 and data["run"]["prompts"] == 20
    table = demo_numbers.render("arms", "", data)
    assert "| base | 50.0 [40, 60] | 80.0 [70, 90] | 61.5 [52, 72] | 40.0 / 90.0 | 60.0 |" in table
    assert "| sft (full) | 1 min 40 s | 2.0 GiB |" in demo_numbers.render("stages", "", data)


def test_method_pages_quote_demo_numbers_only_in_marked_blocks():
    for page in METHOD_PAGES:
        section = re.search(r"^## Demo numbers\n(.*?)(?=^## |\Z)", page.read_text(), re.S | re.M).group(1)
        outside = demo_numbers.BLOCK.sub("", section)
        assert not re.search(r"\d", prose(re.sub(r"\]\([^)]*\)", "]", outside))), \
            f"{page.relative_to(ROOT)}: a figure in 'Demo numbers' outside a <!-- demo:... --> block"


# --- method pages ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", METHOD_PAGES, ids=lambda p: p.name)
def test_method_pages_have_the_same_sections_in_order(page):
    sections = re.findall(r"^## (.+)$", FENCE.sub("", page.read_text()), re.M)
    assert [s for s in sections if s in METHOD_SECTIONS] == METHOD_SECTIONS, page.name


def declared_defaults() -> dict[str, list]:
    """Every parameter name of every stage type and of the settings its model folder takes -> its defaults."""
    modules = [importlib.import_module(module) for module in STAGE_TYPES.values()]
    handles = [getattr(module, "MODEL_HANDLE", None) for module in modules]
    classes = [stage_type(name).params for name in STAGE_TYPES]
    classes += [handle.SETTINGS for handle in handles if handle is not None and handle.SETTINGS is not None]
    assert any(cls.__name__ == "RefusalTokenSettings" for cls in classes)
    result: dict[str, list] = {}
    for cls in classes:
        for name, value in vars(cls()).items():
            result.setdefault(name, []).append(value)
    return result


@pytest.mark.parametrize("page", METHOD_PAGES, ids=lambda p: p.name)
def test_method_pages_name_only_parameters_that_exist(page):
    section = re.search(r"^## Parameters\n(.*?)(?=^## |\Z)", page.read_text(), re.S | re.M).group(1)
    names = re.findall(r"`([a-z][a-z0-9_]*)`", re.sub(r"\]\([^)]*\)", "]", section))
    known = declared_defaults()
    assert [name for name in names if name not in known and name != "parameters"] == []


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_tables_of_defaults_state_the_code_defaults(page):
    known, problems = declared_defaults(), []
    for table in re.findall(r"^\| (?:setting|parameter) \| default \|.*?\n((?:\|.*\n)+)", page.read_text(), re.M):
        for row in table.splitlines()[1:]:
            name, default = [cell.strip().strip("`") for cell in row.strip("|").split("|")[:2]]
            if name not in known or not any(literal(default) == value for value in known[name]):
                problems.append(f"{name}: {default}, the code: {known.get(name, 'no such parameter')}")
    assert problems == []


def test_every_method_folder_has_a_docs_page():
    text = "\n".join(page.read_text() for page in METHOD_PAGES)
    folders = [p.name for p in (ROOT / "porover" / "methods").iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert folders and [f for f in folders if f"porover/methods/{f}/" not in text] == [], \
        "name each method's folder (porover/methods/<method>/) on its page under docs/methods/"


# --- the README ---------------------------------------------------------------------------------------------

def test_readme_is_short_and_leads_with_the_recipe():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert lines.index("## Run your own model and teacher") < 40


def test_readme_run_file_example_validates(tmp_path):
    text = (ROOT / "README.md").read_text()
    recipe = text[text.index("## Run your own model and teacher"):]
    example = re.search(r"```yaml\n(.*?)```", recipe, re.S).group(1)
    path = tmp_path / "mine.yaml"
    path.write_text(example)
    run = load_run_params(path, environment=False)
    assert {"evaluate", "overgenerate", "sft"} <= {stage.type.name for stage in run.stages.values()}


# --- notebook prose -------------------------------------------------------------------------------------------

NOTEBOOK_PARAMS = {stage_type(name).notebook: stage_type(name).params for name in STAGE_TYPES}
# `field` = value, `field: value`, `field = value`, `field` (default value), `field` defaults to value
CLAIM = re.compile(r"`(?P<field>\w+)(?:`\s*(?:=|\(default|defaults to)\s*|\s*[:=]\s*)`?(?P<value>[\w.+-]+)`?")


def sentences(markdown: str) -> list[str]:
    """Sentences (and paragraphs) of Markdown outside code blocks; inline code is kept."""
    return [s for s in re.split(r"(?<=[.;!?])\s+|\n\s*\n", FENCE.sub("", markdown)) if s.strip()]


def literal(text: str):
    """A value as prose writes it: ``1e-2`` and ``0.03`` are numbers, ``true``/``null`` YAML's, else the text."""
    try:
        return float(text) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", text) else yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def default_problems(markdown: str, defaults: dict) -> list[str]:
    """Statements about defaults that the code contradicts, or that name the default judge.

    A sentence that says "default" must not name a refusal judge (the default is `DEFAULT_JUDGE` and changes;
    say "the default judge"), and each ``field = value`` / ``field: value`` / ``field (default value)`` it holds
    for a field of the stage's dataclass must state that field's default.
    """
    problems = []
    for sentence in sentences(markdown):
        if "default" not in sentence.lower():
            continue
        named = [name for name in re.findall(r"`([\w.]+)`", sentence) if name in JUDGES]
        if named:
            problems.append(f"names the judge {named[0]!r} in a sentence about defaults (the default is "
                            f"porover.judges.DEFAULT_JUDGE): {sentence.strip()[:120]!r}")
        for match in CLAIM.finditer(sentence):
            field, text = match.group("field"), match.group("value")
            if field not in defaults:
                continue
            value, default = literal(text), defaults[field]
            same = value == default or (isinstance(value, (int, float)) and isinstance(default, (int, float))
                                        and not isinstance(value, bool) and math.isclose(value, default))
            if not same:
                problems.append(f"says {field} = {text} by default; the code's default is {default!r}: "
                                f"{sentence.strip()[:120]!r}")
    return problems


def test_the_default_check_catches_drift():
    defaults = {"fitness_lambda": 0.03, "k": 2}
    assert default_problems("The default refusal judge is `phrase_lr`.", {}) != []
    assert default_problems(f"By default the judge is `{DEFAULT_JUDGE}`.", {}) != []  # named at all: not allowed
    assert default_problems("The default judge reads every response.", {}) == []
    assert default_problems("By default `fitness_lambda` = 0.5 weighs the log-probability.", defaults) != []
    assert default_problems("By default `fitness_lambda` = 0.03 weighs the log-probability.", defaults) == []
    assert default_problems("Sample `k` (default 4) times.", defaults) != []
    assert default_problems("Sample `k: 4` times when you want more.", defaults) == []  # not about the default
    assert default_problems("By default `fitness_lambda: 3e-2` weighs it.", defaults) == []


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_markdown_states_only_the_code_defaults(notebook):
    params = NOTEBOOK_PARAMS.get(notebook.name)
    defaults = vars(params()) if params else {}
    cells = nbformat.read(notebook, as_version=4).cells
    problems = [p for cell in cells if cell.cell_type == "markdown" for p in default_problems(cell.source, defaults)]
    assert problems == []


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_the_code_default_judge(page):
    text = FENCE.sub("", page.read_text())
    claims = re.findall(r"`(\w+)` \(default\)", text) + re.findall(r"default (?:refusal )?judge(?: is|,)? `(\w+)`", text)
    assert [name for name in claims if name in JUDGES and name != DEFAULT_JUDGE] == [], \
        f"{page.relative_to(ROOT)} names another default judge than porover.judges.DEFAULT_JUDGE ({DEFAULT_JUDGE})"
