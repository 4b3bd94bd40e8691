"""Every command shown in README.md and docs/*.md still runs against today's code.

The fenced ``bash``/``sh``/``console`` blocks (and inline code spans that start with ``python``
or ``make``) are parsed; each command line is checked without running it:

* Hydra commands (``train.py``, ``evaluate.py``, ..., ``python -m src.data.prepare``): the
  overrides are composed with the script's own config (``@hydra.main(config_name=...)``) through
  ``src.config.compose_config``, so a misspelled key or group option fails here, and so does a
  mandatory value (``???``) left unset (unless the line shows ``...`` for the rest);
* argparse scripts (``benchmarks/*.py``, ``python -m src.<module>``): the real parser of the
  script parses the arguments (in a subprocess, one per script, that stops at ``parse_args``);
* ``make X``: X is a target of the Makefile (and ``VAR=`` a Makefile variable);
* ``torchrun ... predict.py`` and ``sbatch scripts/slurm_train.sbatch ...``: as the script they
  launch;
* anything else must be in ``ALLOWED`` below.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}

# commands that are not the project's own: allowed as they are (prefix match on the tokens)
ALLOWED = [
    ("source", ".venv/bin/activate"),
    ("pip", "install"),
    ("tensorboard",),
    ("mlflow", "ui"),
    ("mlflow", "server"),
    ("wandb", "login"),
    ("wandb", "sync"),
    ("wandb", "sweep"),
    ("wandb", "agent"),
    ("git", "clone"),
    ("cd",),
    ("napari",),
]
# Hydra's own flags: dropped before composing (those with a value drop it too)
HYDRA_FLAGS_DROPPED = {"-m", "--multirun", "--resolve", "--help", "-h", "--hydra-help"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg": {"job", "hydra", "all"}, "-c": {"job", "hydra", "all"}}
PLACEHOLDER = "X"


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str  # the command as shown (continuations joined)
    tokens: tuple[str, ...]


# --------------------------------------------------------------------------- parsing the docs


def _strip_placeholders(token: str) -> str:
    token = re.sub(r"<[^<>\s]*>", PLACEHOLDER, token)  # <time>, <entity>
    token = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", PLACEHOLDER, token)  # $VAR, ${VAR}
    return token.replace("…", PLACEHOLDER)


def _split_commands(line: str) -> list[list[str]]:
    """One shell line → the token lists of its commands (split at && || ; |), comments removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for tok in lexer:
        if tok in {"&&", "||", ";", "|", "&"}:
            commands.append(current)
            current = []
        else:
            current.append(tok)
    commands.append(current)
    out = []
    for cmd in commands:
        while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):  # WANDB_MODE=offline python ...
            cmd = cmd[1:]
        if cmd:
            out.append([_strip_placeholders(t) for t in cmd])
    return out


def _block_lines(lang: str, body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The command lines of one code block: continuations joined, comments and output dropped."""
    if lang == "console" and any(text.lstrip().startswith("$ ") for _, text in body):
        prompt_only = True
    else:
        prompt_only = False
    lines, pending, start = [], "", 0
    for lineno, text in body:
        if not pending:
            stripped = text.strip()
            if prompt_only:
                if not stripped.startswith("$ "):
                    continue  # output
                stripped = stripped[2:]
            if not stripped or stripped.startswith("#"):
                continue
            start, pending = lineno, stripped
        else:
            pending += " " + text.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        lines.append((start, pending))
        pending = ""
    if pending:
        lines.append((start, pending))
    return lines


INLINE_START = re.compile(r"^(python3?|make|torchrun|sbatch)\s")


def extract_commands(text: str, name: str) -> list[Command]:
    """All commands of one markdown text: fenced shell blocks, and inline code spans that start
    with python/make/torchrun/sbatch."""
    commands: list[Command] = []
    lines = text.splitlines()
    fence = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
    i, prose = 0, []
    while i < len(lines):
        m = fence.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        marker, lang = m.group(1), m.group(2).lower()
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if lang in SHELL_LANGS:
            for lineno, line in _block_lines(lang, body):
                for tokens in _split_commands(line):
                    commands.append(Command(f"{name}:{lineno}", line, tuple(tokens)))
    # inline spans (they may wrap over a line break in the markdown source)
    prose_text = "\n".join(t for _, t in prose)
    line_of = [n for n, t in prose for _ in range(len(t) + 1)]
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose_text):
        span = " ".join(m.group(1).split())
        if INLINE_START.match(span):
            for tokens in _split_commands(span):
                commands.append(Command(f"{name}:{line_of[m.start()]}", span, tuple(tokens)))
    return commands


def all_commands() -> list[Command]:
    out = []
    for path in DOC_FILES:
        out += extract_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return out


# --------------------------------------------------------------------------- the project's scripts


@cache
def hydra_config_name(path: Path) -> str | None:
    """The config name of a Hydra script (``run_command("name", ...)`` of :mod:`src.cli`, or
    ``@hydra.main(config_name=...)``), None for a non-Hydra script."""
    text = path.read_text(encoding="utf-8")
    m = (re.search(r"\brun_command\(\s*[\"']([\w/-]+)[\"']", text)
         or re.search(r"@hydra\.main\((?:[^@]{0,300}?)config_name=[\"']([\w/-]+)[\"']", text))
    return m.group(1) if m else None


def module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__main__.py"):
        if cand.is_file():
            return cand
    return None


@cache
def makefile_names() -> tuple[frozenset[str], frozenset[str]]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set()
    for m in re.finditer(r"^([A-Za-z0-9_.%/-][^:=\n]*?)\s*:(?!=)", text, re.M):
        targets.update(m.group(1).split())
    variables = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[?:+]?=", text, re.M))
    return frozenset(targets), frozenset(variables)


# One subprocess runs each script up to its parse_args, then parses every argv with the real
# parser, and goes on to the next script (the heavy imports are paid once).
_HARNESS = r"""
import argparse, contextlib, io, json, runpy, sys
jobs = json.loads(sys.stdin.read())
class _Done(BaseException):
    pass
_orig = argparse.ArgumentParser.parse_args
results = {}
for kind, target, argvs in jobs:
    def _check(self, args=None, namespace=None, argvs=argvs, target=target):
        out = []
        for argv in argvs:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    _orig(self, argv)
                out.append(None)
            except SystemExit:
                out.append(err.getvalue().strip() or "argparse exited")
        results[target] = out
        raise _Done
    argparse.ArgumentParser.parse_args = _check
    sys.argv = [target]
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
        results[target] = "did not reach an argparse parser"
    except _Done:
        pass
    except BaseException as e:
        results[target] = f"failed before its parser: {type(e).__name__}: {e}"
print("@@RESULTS@@" + json.dumps(results))
"""


def run_argparse_checks(jobs: dict[tuple[str, str], list[list[str]]]) -> dict[tuple[str, str], list[str | None]]:
    """Parse each argv list with the script's own parser (one subprocess for all scripts).
    Returns per (kind, target) one error message or None per argv."""
    if not jobs:
        return {}
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    payload = json.dumps([[kind, target, argvs] for (kind, target), argvs in jobs.items()])
    proc = subprocess.run([sys.executable, "-c", _HARNESS], cwd=ROOT, env=env, input=payload,
                          capture_output=True, text=True, timeout=300)
    m = re.search(r"@@RESULTS@@(.*)", proc.stdout)
    if not m:
        msg = f"argparse harness failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        return {key: [msg] * len(argvs) for key, argvs in jobs.items()}
    raw = json.loads(m.group(1))
    out = {}
    for (kind, target), argvs in jobs.items():
        res = raw.get(target, "not run")
        out[(kind, target)] = res if isinstance(res, list) else [f"{target}: {res}"] * len(argvs)
    return out


# --------------------------------------------------------------------------- checking one command


class DocCommandError(AssertionError):
    pass


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep overrides (``a=1,2``) → override lists that together use every value once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, sweeps = [], []
    for text, o in zip(overrides, parsed, strict=True):
        if o.is_sweep_override():
            key = o.get_key_element()
            values = list(o.sweep_string_iterator())
            sweeps.append((len(base), key, values))
            base.append(f"{key}={values[0]}")
        else:
            base.append(text)
    variants = [base]
    for idx, key, values in sweeps:
        for v in values[1:]:
            variant = list(base)
            variant[idx] = f"{key}={v}"
            variants.append(variant)
    return variants


def check_hydra(cmd: Command, config_name: str, args: list[str]) -> None:
    from src.config import compose_config, setup_config_env

    setup_config_env()
    overrides = []
    it = iter(args)
    for a in it:
        if a in HYDRA_FLAGS_DROPPED or a == "...":
            continue
        if a in {"--config-name", "-cn"}:
            config_name = next(it)
            continue
        if a in HYDRA_FLAGS_WITH_VALUE:
            value = next(it, None)
            if value not in HYDRA_FLAGS_WITH_VALUE[a]:
                raise DocCommandError(f"{cmd.where}: {a} {value}: not one of {sorted(HYDRA_FLAGS_WITH_VALUE[a])}")
            continue
        if a.startswith("-"):
            raise DocCommandError(f"{cmd.where}: unexpected flag {a!r} for a Hydra command: {cmd.text}")
        overrides.append(a)
    partial = "..." in args  # `python predict.py ... rank=1`: the rest as in the lines above
    try:
        for variant in _expand_sweeps(overrides):
            cfg = compose_config(config_name, variant)
    except Exception as e:  # composition errors come as several Hydra/OmegaConf types
        raise DocCommandError(f"{cmd.where}: `{cmd.text}` does not compose with conf/{config_name}.yaml: "
                              f"{type(e).__name__}: {e}") from e
    missing = [] if partial else _missing_values(cfg)
    if missing:
        raise DocCommandError(f"{cmd.where}: `{cmd.text}` leaves mandatory values of conf/{config_name}.yaml "
                              f"unset: {', '.join(missing)}")


def _missing_values(node, prefix: str = "") -> list[str]:
    """Keys still at ``???`` (without resolving interpolations, which need a running Hydra)."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            out.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_interpolation():
            out += _missing_values(child, f"{prefix}{key}.")
    return out


def check_make(cmd: Command) -> None:
    targets, variables = makefile_names()
    for tok in cmd.tokens[1:]:
        if tok.startswith("-"):
            continue
        if "=" in tok:
            var = tok.split("=", 1)[0]
            if var not in variables:
                raise DocCommandError(f"{cmd.where}: `{cmd.text}`: {var} is not a Makefile variable")
        elif tok not in targets:
            raise DocCommandError(f"{cmd.where}: `{cmd.text}`: no Makefile target {tok!r}")


def plan(cmd: Command) -> tuple:
    """What to check for one command: ('hydra', config, args) | ('argparse', kind, target, args)
    | ('make',) | ('allowed',). Raises DocCommandError for unknown commands or missing files."""
    t = list(cmd.tokens)
    prog = Path(t[0]).name
    if prog == "torchrun":  # torchrun [--opt=v | --opt v]... script.py args
        rest = t[1:]
        while rest and not rest[0].endswith(".py"):
            rest = rest[1:]
        if not rest:
            raise DocCommandError(f"{cmd.where}: torchrun without a script: {cmd.text}")
        return plan(Command(cmd.where, cmd.text, ("python", *rest)))
    if prog == "sbatch":  # sbatch [--opt=v]... script.sbatch overrides (our script runs train.py "$@")
        rest = [a for a in t[1:] if not a.startswith("-")]
        if not rest or not (ROOT / rest[0]).is_file():
            raise DocCommandError(f"{cmd.where}: sbatch script not found: {cmd.text}")
        script = (ROOT / rest[0]).read_text(encoding="utf-8")
        if "train.py" in script and '"$@"' in script:
            return ("hydra", hydra_config_name(ROOT / "train.py"), rest[1:])
        return ("allowed",)
    if prog == "make":
        return ("make",)
    if re.fullmatch(r"python(3(\.\d+)?)?", prog):
        if len(t) >= 3 and t[1] == "-m":
            module, args = t[2], t[3:]
            if module == "pip":
                return ("allowed",)
            if not module.startswith("src."):
                raise DocCommandError(f"{cmd.where}: `python -m {module}` is not a project module: {cmd.text}")
            path = module_path(module)
            if path is None:
                raise DocCommandError(f"{cmd.where}: module {module} does not exist: {cmd.text}")
            name = hydra_config_name(path)
            return ("hydra", name, args) if name else ("argparse", "module", module, args)
        if len(t) >= 2 and t[1].endswith(".py"):
            path = ROOT / t[1]
            if not path.is_file():
                raise DocCommandError(f"{cmd.where}: script {t[1]} does not exist: {cmd.text}")
            name = hydra_config_name(path)
            return ("hydra", name, t[2:]) if name else ("argparse", "path", t[1], t[2:])
        raise DocCommandError(f"{cmd.where}: unrecognised python command: {cmd.text}")
    for allowed in ALLOWED:
        if tuple(t[: len(allowed)]) == allowed:
            for tok in t[len(allowed):]:  # files of this repo named by an allowed command exist
                if re.match(r"(scripts|conf|benchmarks)/", tok) and not (ROOT / tok).exists():
                    raise DocCommandError(f"{cmd.where}: {tok} does not exist: {cmd.text}")
            return ("allowed",)
    raise DocCommandError(f"{cmd.where}: command not checked and not in the allow-list: {cmd.text}")


def check_commands(commands: list[Command]) -> dict[str, int]:
    """Check every command; raises DocCommandError listing every failure. Returns counts per kind."""
    errors, counts = [], {}
    argparse_jobs: dict[tuple[str, str], list[tuple[Command, list[str]]]] = {}
    plans = []
    for cmd in commands:
        try:
            p = plan(cmd)
        except DocCommandError as e:
            errors.append(str(e))
            continue
        counts[p[0]] = counts.get(p[0], 0) + 1
        plans.append((cmd, p))
        if p[0] == "argparse":
            argparse_jobs.setdefault((p[1], p[2]), []).append((cmd, [a for a in p[3] if a != "..."]))
    # start the argparse subprocesses first, compose the Hydra commands while they run
    results_box = {}
    thread = threading.Thread(target=lambda: results_box.update(
        run_argparse_checks({k: [argv for _, argv in v] for k, v in argparse_jobs.items()})))
    thread.start()
    try:
        for cmd, p in plans:
            try:
                if p[0] == "hydra":
                    check_hydra(cmd, p[1], list(p[2]))
                elif p[0] == "make":
                    check_make(cmd)
            except DocCommandError as e:
                errors.append(str(e))
    finally:
        thread.join()
    for key, items in argparse_jobs.items():
        for (cmd, _), err in zip(items, results_box[key], strict=True):
            if err:
                errors.append(f"{cmd.where}: `{cmd.text}`: {err}")
    if errors:
        raise DocCommandError(f"{len(errors)} stale command(s) in the docs:\n" + "\n".join(errors))
    return counts


# --------------------------------------------------------------------------- the tests


def test_every_documented_command_is_valid(capsys):
    commands = all_commands()
    counts = check_commands(commands)
    with capsys.disabled():
        print(f"\n{len(commands)} documented commands checked: {counts}", file=sys.__stdout__)
    # every Hydra entry point at the repo root shows up in the docs
    shown = {c.tokens[1] for c in commands if len(c.tokens) > 1}
    for script in ROOT.glob("*.py"):
        if hydra_config_name(script):
            assert script.name in shown, f"{script.name} is not shown in any docs code block"
    assert counts.get("hydra", 0) >= 40 and counts.get("argparse", 0) >= 5 and counts.get("make", 0) >= 2


FAKE_DOC = """
Some text with an inline `python train.py model.no_such_key=1`.

```bash
python train.py model.no_such_key=1      # misspelled key
python train.py model=no_such_model
python train.py -m model=unet,no_such_model
make no-such-target
make train NO_SUCH_VAR=1
python benchmarks/few_labels.py --data-dir d --no-such-flag 3
python no_such_script.py
frobnicate --all
python predict.py input=scan.tif output=seg.zarr
```

```console
$ python evaluate.py no_such_key=1
output line that is not a command
```
"""


def test_checker_fails_on_stale_commands():
    commands = extract_commands(FAKE_DOC, "fake.md")
    expected = [  # why each one fails (fenced blocks first, then the inline span)
        "Could not override 'model.no_such_key'",
        "no_such_model",
        "no_such_model",
        "no Makefile target 'no-such-target'",
        "NO_SUCH_VAR is not a Makefile variable",
        "unrecognized arguments: --no-such-flag",
        "no_such_script.py does not exist",
        "not in the allow-list",
        "unset: ckpt_path",
        "Could not override 'no_such_key'",
        "Could not override 'model.no_such_key'",
    ]
    assert len(commands) == len(expected)
    for cmd, why in zip(commands, expected, strict=True):
        with pytest.raises(DocCommandError, match=re.escape(why)):
            check_commands([cmd])


def test_checker_accepts_valid_forms():
    doc = """
```bash
WANDB_MODE=offline python train.py model=unet trainer.max_epochs=1 \\
    hydra.run.dir=logs/<time> data.batch_size=$BATCH      # comment
python train.py -m model=unet,lrcsnet seed=1,2 hydra/launcher=submitit_local
python train.py hparams_search=segmentpy_optuna hydra.sweeper.n_trials=6
torchrun --nproc-per-node=4 predict.py ckpt_path=... input=scan.tif output=seg.zarr
sbatch --nodes=2 scripts/slurm_train.sbatch model=unet
make install LOCK= && make test
source .venv/bin/activate
```
"""
    commands = extract_commands(doc, "ok.md")
    assert [c.tokens[0] for c in commands] == ["python", "python", "python", "torchrun", "sbatch",
                                                "make", "make", "source"]
    counts = check_commands(commands)
    assert counts == {"hydra": 5, "make": 2, "allowed": 1}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_between_pages_resolve():
    """Relative links (and their #anchors) in README.md and docs/*.md point at something."""
    anchors = {}
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        text_wo_code = re.sub(r"```.*?```", "", text, flags=re.S)
        names = {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text_wo_code, re.M)}
        names |= set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", text))
        anchors[path.resolve()] = names
    bad = []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"[a-z]+:", link):
                continue
            file, _, anchor = link.partition("#")
            target = (path.parent / file).resolve() if file else path.resolve()
            if not target.exists():
                bad.append(f"{path.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors.get(target, set()):
                bad.append(f"{path.name}: {link} (no such anchor)")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250

