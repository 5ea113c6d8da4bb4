"""Every code block of README.md runs here, so the README cannot drift from the product.

Blocks are read from README.md by their fence language: ```sh blocks run with `bash -e -o pipefail`
(every line must exit 0), ```python blocks run with the venv's Python, ```text blocks are not code and
are skipped. Any other block (no language, another language, or a shell command this file does not
know) is a failing case: teach this file how to treat it.

All blocks share one temporary working folder. The inputs the README names come from its own
scripts: `scripts/example_inputs.py` (my_shoe.jpg and shoe.png: a Fashion-MNIST test sneaker as a photo;
photo.jpg, street.jpg and other_folder/: held-out facades), `digits/` from scikit-learn's digits and
`facades/` from the facade set. A block run on its own (`-k`) gets the inputs from the same script first.
A block that uses a run folder another block makes (`runs/first`, `runs/facade`, `runs/sweep-activations-seed-a`)
runs that block first (once per module), so any single case can also run on its own (`-k`). Every block
runs at most once per module, so a script that refuses an existing destination (scripts/digits_folder.py,
scripts/facade_folder.py) meets a fresh working folder. CNNLAB_CACHE_DIR points into the working folder:
nothing is decoded into ~/.cache.

Rewrites, to keep the whole file to about three minutes on a 2-core CPU (the README itself is not changed):
- `cnnlab fashion train` / `sweep-activations` (torchrun included) get `--limit 256 --epochs 1` appended,
  `cnnlab facade train` and `cnnlab segment train` get
  `--limit 8 --epochs 1 --set data.val_fraction=0.02 --set data.test_fraction=0.02` (on the facade set:
  18 validation and 18 test images instead of 90 each), `cnnlab classify train` gets `--epochs 3` (the
  digits' 1,438 8x8 images take about a second an epoch; tests/test_own_data.py runs the full 30).
  The last option wins; each produced run's config.yaml is checked to hold every appended value.
- `python scripts/NAME.py` runs the repository's script with the venv's Python, and a `../shared/` path
  (the data next to the checkout) is resolved from the repository root, as the README means it.
- Python: every `cnnlab.train(...)` call gets `epochs=1, limit=256` (an existing `epochs=` is dropped);
  top-level expressions are printed, as in a notebook.
- `. .venv/bin/activate` sources the activate script of the venv running the tests.
- `cnnlab serve` gets `--port 0`, runs in the background until /api/health says every model is ready,
  and is stopped; a ```sh block of `curl` lines runs against the first server of the serve block before it
  (port rewritten, `curl --fail-with-body -sS` so an HTTP error fails the line).
Skips, each with its reason: `make` blocks (they install and run this suite) and the two-machine torchrun.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import FACADE_REAL, FASHION_REAL, IN_CI, require_data

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the venv running the tests: cnnlab, torchrun, python
BLOCK_TIMEOUT_S = 600

FASHION_SHORT = "--limit 256 --epochs 1"
FACADE_SHORT = "--limit 8 --epochs 1 --set data.val_fraction=0.02 --set data.test_fraction=0.02"
DIGITS_SHORT = "--epochs 3"
SHORT = {"fashion": FASHION_SHORT, "facade": FACADE_SHORT, "classify": DIGITS_SHORT, "segment": FACADE_SHORT}
PY_TRAIN_SHORT = "epochs=1, limit=256"

TRAIN_RE = re.compile(r"\bcnnlab (fashion|facade|classify|segment) (train|sweep-activations|tune)\b")
SCRIPT_RE = re.compile(r"^python3? scripts/([\w-]+\.py)(?=\s|$)")
SHARED_RE = re.compile(r"(?<![^\s=])\.\./shared/")  # data next to the checkout, as in `../shared/data/...`
RUN_REF_RE = re.compile(r"(?<![\w/.-])runs/[\w.-]+")
PLACEHOLDER_RE = re.compile(r"<[^>]*>|\bRUN\d*\b|\bHOST\d*\b")
SKIP_MAKE = "`make demo` / `make test` install everything and run this suite"
SKIP_MULTIHOST = "needs two hosts: tests/test_two_hosts.py runs it over two network namespaces (make test-hosts)"


# ---------------------------------------------------------------- reading the README


@dataclass
class Block:
    heading: str
    index: int  # 1-based, among the runnable blocks under this heading
    lang: str
    text: str
    line: int  # where the block starts in README.md

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{slug}-{self.index}"

    @property
    def commands(self) -> list[str]:
        """Shell commands: continuation lines joined, comments and blank lines dropped."""
        out, pending = [], ""
        for raw in self.text.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            line = pending + line
            pending = ""
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
        return out

    def kind(self) -> str:
        """How the harness treats this block; "unknown: ..." fails its case."""
        if self.lang == "python":
            return "python"
        if self.lang != "sh":
            return f"unknown: a ```{self.lang or '(no language)'} block; tag non-code blocks ```text"
        cmds = self.commands
        if not cmds:
            return "unknown: an empty ```sh block"
        if all(c.startswith("make ") for c in cmds):
            return "make"
        if all(c.startswith("cnnlab serve") for c in cmds):
            return "serve"
        if all(c.startswith("curl ") for c in cmds):
            return "curl"
        if any(re.match(r"([A-Z_]+=\S+ )*torchrun ", c) and re.search(r"--nnodes[= ]([2-9]|\d\d)", c) for c in cmds):
            return "multi-host"
        for c in cmds:
            known = (
                c == ". .venv/bin/activate"
                or (c.startswith("cnnlab ") and not c.startswith("cnnlab serve"))
                or c.startswith("torchrun --standalone ")
                or SCRIPT_RE.match(c) is not None
            )
            if not known:
                return f"unknown: command {c!r}"
        return "sh"

    def produces(self) -> set[str]:
        """Run folders this block makes: `--out runs/X`, or a sweep's default folder."""
        out = set()
        for c in self.commands:
            train = TRAIN_RE.search(c)
            if not train:
                continue
            m = re.search(r"--(?:out|study)\s+(runs/[\w.-]+)", c)
            if m:
                out.add(m.group(1))
            elif train.group(2) == "sweep-activations":
                recipe = re.search(r"--recipe\s+(\S+)", c)
                out.add(f"runs/sweep-activations-{recipe.group(1) if recipe else 'seed-a'}")
        return out

    def needs(self) -> set[str]:
        """Run folders this block uses but does not make."""
        refs = {m.group(0) for c in self.commands for m in RUN_REF_RE.finditer(c)}
        return refs - self.produces()

    def data(self) -> set[str]:
        """Real data sets the block's commands and inputs are made from."""
        text = " ".join(self.commands) if self.lang == "sh" else self.text
        need = set()
        if re.search(r"fashion|shoe", text):
            need.add("fashion")
        if re.search(r"facade|photo\.jpg|street\.jpg|other_folder", text):
            need.add("facade")
        if re.search(r"\bdigits", text):
            need.add("digits")
        return need


def read_blocks(text: str) -> list[Block]:
    blocks, heading, counts = [], "top", {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```\s*([\w+-]*)\s*$", line)
        if fence:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            lang = fence.group(1)
            if lang != "text":
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append(Block(heading, counts[heading], lang, "\n".join(body) + "\n", start))
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        i += 1
    return blocks


BLOCKS = read_blocks(README.read_text())
BY_ID = {b.id: b for b in BLOCKS}


def producer(run: str) -> Block:
    found = [b for b in BLOCKS if run in b.produces()]
    assert found, f"README refers to {run}, which no block makes (with --out {run})"
    return found[0]


# ---------------------------------------------------------------- rewrites


def rewrite_sh(cmd: str) -> str:
    if cmd == ". .venv/bin/activate":
        return f". {BIN / 'activate'}"
    script = SCRIPT_RE.match(cmd)
    if script:
        path = REPO / "scripts" / script.group(1)
        cmd = f"{shlex.quote(str(BIN / 'python'))} {shlex.quote(str(path))}{cmd[script.end() :]}"
    cmd = SHARED_RE.sub(lambda _: shlex.quote(str(REPO.parent / "shared")) + "/", cmd)
    m = TRAIN_RE.search(cmd)
    if m and m.group(2) == "tune":  # a study of two short trials shows it all
        cmd = re.sub(r"--trials \d+", "--trials 2", cmd)
    if m:
        return f"{cmd} {SHORT[m.group(1)]}"
    return cmd


def rewrite_python(source: str) -> str:
    """`cnnlab.train(...)` calls get epochs=1, limit=256; top-level expressions are printed."""
    calls = source.count("cnnlab.train(")

    def shorten(m: re.Match) -> str:
        args = m.group(1)
        assert '"fashion"' in args, f"teach tests/test_readme.py to shorten {m.group(0)}"
        args = re.sub(r",?\s*\b(epochs|limit)\s*=\s*[^,()]+", "", args)
        return f"cnnlab.train({args}, {PY_TRAIN_SHORT})"

    source, n = re.subn(r"cnnlab\.train\(([^()]*)\)", shorten, source)
    assert n == calls, "a cnnlab.train(...) call the harness cannot shorten (nested parentheses?)"
    tree = ast.parse(source)
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Expr):
            call = ast.Call(ast.Name("print", ast.Load()), [node.value], [])
            tree.body[i] = ast.copy_location(ast.Expr(call), node)
    return ast.unparse(ast.fix_missing_locations(tree))


def check_placeholders(block: Block) -> None:
    for c in block.commands:
        m = PLACEHOLDER_RE.search(c)
        assert not m, f"README.md:{block.line}: placeholder {m.group(0)!r} in {c!r}; make the command runnable"


# ---------------------------------------------------------------- inputs and running


def env(work: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["COLUMNS"] = "160"
    e["CNNLAB_CACHE_DIR"] = str(work / ".cnnlab-cache")  # decoded image folders: not ~/.cache
    return e


def make_inputs(work: Path, data: set[str]) -> None:
    """The files the README's commands name, made as the README makes them (scripts/example_inputs.py, the
    quick start's second line), also for a block run on its own."""
    if data & {"fashion", "facade"} and not (work / "street.jpg").exists():
        script = REPO / "scripts" / "example_inputs.py"
        subprocess.run([BIN / "python", script, work], check=True, capture_output=True, env=env(work), timeout=120)


def require(data: set[str]) -> None:
    if "fashion" in data:
        require_data(FASHION_REAL, "Fashion-MNIST (Debian package dataset-fashion-mnist)")
    if "facade" in data:
        require_data(FACADE_REAL, "the mini-facade set (../shared/data/cs194-26_mini_facade)")
    if "digits" in data and importlib.util.find_spec("sklearn") is None:
        message = "scripts/digits_folder.py needs scikit-learn (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message + " (CI=true: real-data tests must run)")
        pytest.skip(message)


def run_script(work: Path, args: list[str], script: str, name: str) -> None:
    """Run `script` (saved as work/.readme-NAME) in `work`; its output, commands echoed, is in the failure."""
    path = work / f".readme-{name}"
    path.write_text(script)
    t0 = time.monotonic()
    p = subprocess.run(
        [*args, str(path)],
        cwd=work,
        env=env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    took = time.monotonic() - t0
    out = p.stdout[-6000:]
    assert p.returncode == 0, f"{path} exited {p.returncode} after {took:.0f}s; the last command failed:\n{out}"
    print(f"--- {name}: {took:.0f}s\n{out}")  # shown by `pytest -rP`


BASH = ["bash", "-e", "-o", "pipefail"]  # every line must exit 0, in a pipe too


def traced(commands: list[str]) -> str:
    """A script that echoes each command to stderr before running it (like `bash -x`, without tracing
    inside the venv's activate script)."""
    return "".join(f"printf '%s\\n' {shlex.quote('$ ' + c)} >&2\n{c}\n" for c in commands)


SHORTCUT_KEYS = {"--epochs": "train.epochs", "--limit": "data.limit"}


def short_values(short: str) -> dict[str, object]:
    """The config values the appended options set: {"train.epochs": 1, "data.val_fraction": 0.02, ...}."""
    args, values = shlex.split(short), {}
    for option, value in zip(args[::2], args[1::2], strict=True):
        if option == "--set":
            option, _, value = value.partition("=")
        else:
            option = SHORTCUT_KEYS[option]
        values[option] = yaml.safe_load(value)
    return values


def check_shortened(work: Path, run: str) -> None:
    """The appended options won over the README's own values (the last option wins)."""
    configs = sorted((work / run).glob("**/config.yaml"))
    assert configs, f"{run}: no config.yaml written"
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        for key, want in short_values(SHORT[cfg["task"]]).items():
            section, name = key.split(".")
            got = cfg[section][name]
            assert got == want, f"{path}: {key} is {got!r}; the appended {SHORT[cfg['task']]!r} did not win"


class Server:
    """A README `cnnlab serve` line, in the background on a free port, until every model is ready."""

    def __init__(self, work: Path, cmd: str):
        self.log = work / ".readme-serve.log"
        self.cmd = f"{cmd} --port 0"
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {self.cmd}"],
            cwd=work,
            env=env(work),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = self._wait_for_port()
        self.health = self._wait_until_ready()

    def _fail(self, why: str) -> None:
        self.stop()
        pytest.fail(f"{self.cmd}: {why}\n--- log ---\n{self.log.read_text()[-3000:]}")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                self._fail(f"exited with {self.proc.returncode} before listening")
            time.sleep(0.2)
        self._fail("did not start listening within 120 s")

    def _wait_until_ready(self) -> dict:
        deadline, health = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=10) as r:
                    health = json.load(r)
                if health.get("models") and all(m.get("ready") for m in health["models"].values()):
                    return health
                if any(m.get("error") for m in health.get("models", {}).values()):
                    self._fail(f"a model failed to load: {health}")
            except OSError:
                pass
            time.sleep(0.3)
        self._fail(f"/api/health never reported every model ready; last answer {health}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Runner:
    """Runs blocks in one working folder, each at most once; run folders come from their producer blocks."""

    def __init__(self, work: Path):
        self.work = work
        self.done: dict[str, str | None] = {}  # block id -> None (passed) or why it failed

    def ensure(self, block: Block, chain: tuple[str, ...] = ()) -> None:
        assert block.id not in chain, f"README blocks depend on each other in a cycle: {chain}"
        if block.id not in self.done:
            check_placeholders(block)
            for run in sorted(block.needs()):
                if not (self.work / run).exists():
                    self.ensure(producer(run), (*chain, block.id))
            try:
                self.execute(block)
                self.done[block.id] = None
            except (AssertionError, pytest.fail.Exception, subprocess.TimeoutExpired) as e:
                self.done[block.id] = str(e)
                raise
        elif self.done[block.id] is not None:
            who = chain[-1] if chain else block.id
            pytest.fail(f"{who} needs block {block.id}, which failed:\n{self.done[block.id]}")

    def execute(self, block: Block) -> None:
        kind = block.kind()
        require(block.data() | {d for run in block.needs() for d in producer(run).data()})
        make_inputs(self.work, block.data())
        if kind == "python":
            run_script(self.work, [str(BIN / "python")], rewrite_python(block.text), f"{block.id}.py")
        elif kind == "sh":
            run_script(self.work, BASH, traced([rewrite_sh(c) for c in block.commands]), f"{block.id}.sh")
            for run in block.produces():
                check_shortened(self.work, run)
        elif kind == "serve":
            for cmd in block.commands:
                server = Server(self.work, cmd)
                server.stop()
                assert server.health["status"] == "ok", server.health
                # the models asked for are the ones served; the slots' old option names still count
                for slot, old in (("classify", "fashion"), ("segment", "facade")):
                    asked = re.search(rf"--(?:{slot}|{old})\s+(\S+)", cmd)
                    want = Path(asked.group(1)).name if asked else old  # default: the shipped model
                    assert server.health["models"][slot]["name"] == want, (cmd, server.health)
        elif kind == "curl":
            serve_blocks = [b for b in BLOCKS if b.kind() == "serve" and b.line < block.line]
            assert serve_blocks, "a curl block needs a `cnnlab serve` block before it"
            server = Server(self.work, serve_blocks[-1].commands[0])
            try:
                cmds = [
                    c.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}").replace(
                        "curl ", "curl --fail-with-body -sS ", 1
                    )
                    for c in block.commands
                ]
                run_script(self.work, BASH, traced(cmds), f"{block.id}.sh")
            finally:
                server.stop()
        else:
            pytest.fail(f"README.md:{block.line}: the harness does not know how to run this block ({kind})")


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("readme"))


# ---------------------------------------------------------------- the cases


def test_readme_blocks_are_found():
    kinds = [b.kind() for b in BLOCKS]
    assert kinds.count("sh") >= 5 and "python" in kinds and "serve" in kinds and "curl" in kinds, kinds
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)


@pytest.mark.parametrize("block_id", list(BY_ID))
def test_readme_block(block_id: str, runner: Runner):
    block = BY_ID[block_id]
    kind = block.kind()
    if kind == "make":
        pytest.skip(SKIP_MAKE)
    if kind == "multi-host":
        pytest.skip(SKIP_MULTIHOST)
    if kind.startswith("unknown"):
        pytest.fail(f"README.md:{block.line}: {kind}; teach tests/test_readme.py how to run (or skip) it")
    runner.ensure(block)
