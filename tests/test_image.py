"""The image builds from a clean checkout and holds every command, checked without a Docker
engine: the build context is assembled as Docker would (the Dockerfile's COPY lines and
.dockerignore, applied to the files git tracks), installed into a fresh virtualenv with the
Dockerfile's own `pip` commands (the lock, hash-checked, then the project), and its
`signatures` is run."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import typer.main

from cli.main import app

ROOT = Path(__file__).resolve().parent.parent


# .dockerignore, as Docker reads it (moby/patternmatcher and moby/buildkit's dockerignore):
# one pattern a line, `#` comments, surrounding whitespace trimmed, the pattern cleaned like
# Go's filepath.Clean with a leading `/` dropped, `!` for an exception. Patterns are Go
# filepath.Match globs plus `**` (any number of directories, none included). A path is
# excluded when the last pattern matching it, or one of its parent directories, is not an
# exception.
@dataclass(frozen=True)
class IgnorePattern:
    regex: re.Pattern[str]
    exception: bool


def compile_ignore_pattern(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < len(pattern) and pattern[i] == "*":
                i += 1
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                out += ".*" if i == len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            if i < len(pattern):
                out += re.escape(pattern[i])
                i += 1
            else:
                out += "\\\\"
        elif ch in "[]":
            out += ch
        else:
            out += re.escape(ch)
    return re.compile(out + "$", re.DOTALL)


def read_dockerignore(text: str) -> list[IgnorePattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                continue
        line = posixpath.normpath(line)
        if len(line) > 1 and line.startswith("/"):
            line = line.lstrip("/")
        patterns.append(IgnorePattern(compile_ignore_pattern(line), exception))
    return patterns


def is_ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if any(pattern.regex.match(candidate) for candidate in candidates):
            ignored = not pattern.exception
    return ignored


@pytest.mark.parametrize(
    ("lines", "path", "ignored"),
    [
        (["*"], "runtime/cli.py", True),
        (["*", "!runtime"], "runtime/cli.py", False),
        (["*", "!runtime", "**/__pycache__"], "runtime/__pycache__/cli.cpython-311.pyc", True),
        (["**/*.py[cod]"], "ops/x.pyc", True),
        (["**/*.py[cod]"], "ops/x.py", False),
        (["/tests"], "tests/test_image.py", True),
        (["tests"], "ops/tests/x.py", False),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md"], "docs/a.md", False),
        (["docs/**"], "docs/a/b.md", True),
        (["# tests", "", "  bench  "], "bench/run.py", True),
        (["# tests"], "tests/x.py", False),
    ],
)
def test_dockerignore_matches_as_docker_does(lines: list[str], path: str, ignored: bool) -> None:
    assert is_ignored(path, read_dockerignore("\n".join(lines))) is ignored


# The Dockerfile, read strictly: anything this reading does not understand fails the test
# rather than being skipped, so the check cannot silently drift from the real build.
KNOWN = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}


@dataclass(frozen=True)
class Pip:
    args: list[str]  # after `pip`
    copies: int  # how many COPY lines came before it: the files it sees
    workdir: str


@dataclass
class Build:
    copies: list[tuple[list[str], str, str]] = field(default_factory=list)  # srcs, dest, workdir
    pips: list[Pip] = field(default_factory=list)  # every `pip` command, in order
    workdir: str = "/"

    def installs(self) -> list[list[str]]:
        return [pip.args[1:] for pip in self.pips if pip.args[0] == "install"]


def instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def check_run(command: str, build: Build) -> None:
    assert "--mount" not in command and "<<" not in command, f"RUN not understood: {command}"
    steps = [shlex.split(step) for step in command.split("&&")]
    first = steps[0]
    if first[:2] == ["pip", "install"]:
        for step in steps:
            if step[:2] == ["rm", "-rf"]:
                continue
            assert step[0] == "pip" and step[1] in ("install", "check"), command
            build.pips.append(Pip(step[1:], len(build.copies), build.workdir))
    elif first[0] == "apt-get":
        for step in steps:
            assert step[0] == "apt-get" or step == ["rm", "-rf", "/var/lib/apt/lists/*"], command
            assert "install" not in step or "--no-install-recommends" in step, command
    elif first[0] == "useradd":
        assert len(steps) == 1, command
    else:
        pytest.fail(f"RUN not understood (does it read files of the context?): {command}")


def read_dockerfile(text: str) -> Build:
    build = Build()
    for keyword, rest in instructions(text):
        assert keyword in KNOWN, f"Dockerfile instruction not understood: {keyword} {rest}"
        if keyword == "FROM":
            assert len(rest.split()) == 1, f"only a single-stage build is understood: {rest}"
        elif keyword == "WORKDIR":
            build.workdir = posixpath.join(build.workdir, rest)
        elif keyword == "COPY":
            assert not rest.startswith("["), f"COPY's JSON form is not understood: {rest}"
            args = shlex.split(rest)
            assert not any(a.startswith("--") for a in args), f"COPY flags not understood: {rest}"
            assert len(args) >= 2, rest
            build.copies.append((args[:-1], args[-1], build.workdir))
        elif keyword == "RUN":
            check_run(rest, build)
    assert build.copies and build.installs(), "the Dockerfile copies and installs nothing"
    last = max(i for i, pip in enumerate(build.pips) if pip.args[0] == "install")
    assert build.pips[last].copies == len(build.copies), "a COPY after the last install"
    return build


def test_the_image_installs_only_what_the_lock_pins() -> None:
    build = read_dockerfile((ROOT / "Dockerfile").read_text())
    installs = build.installs()
    assert len(installs) == 2, installs
    lock, project = installs
    # nothing is resolved at build time: every dependency comes from the lock, by hash
    assert all("--no-deps" in args for args in installs), installs
    assert "--require-hashes" in lock and "--only-binary=:all:" in lock, lock
    assert lock[lock.index("-r") + 1] == "requirements.lock", lock
    assert project[-1] == ".", project
    # and the build fails if the lock lacks a dependency of what was installed
    assert [pip.args for pip in build.pips][-1] == ["check"]


def git_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def assemble(
    copies: list[tuple[list[str], str, str]], context: set[str], image_root: Path
) -> dict[str, str]:
    """Copy the context's files as the COPY lines do; return {image path: context path}."""
    placed: dict[str, str] = {}
    for srcs, dest, workdir in copies:
        target = posixpath.normpath(posixpath.join(workdir, dest))
        into_dir = dest.endswith("/") or dest in (".", "./") or len(srcs) > 1
        for src in srcs:
            assert not re.search(r"[*?\[]", src), f"COPY wildcards are not understood: {src}"
            name = posixpath.normpath(src).lstrip("/")
            below = sorted(f for f in context if f.startswith(name + "/"))
            if name in context:
                dest_path = posixpath.join(target, posixpath.basename(name)) if into_dir else target
                placed[dest_path] = name
            elif below:
                for f in below:
                    placed[posixpath.join(target, f[len(name) + 1 :])] = f
            else:
                pytest.fail(f"COPY {src}: not in the build context (.dockerignore?)")
    for image_path, source in placed.items():
        destination = image_root / image_path.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / source, destination)
    return placed


def build_context() -> set[str]:
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    return {f for f in git_files() if not is_ignored(f, patterns)}


@pytest.mark.integration
@pytest.mark.slow
def test_the_build_context_holds_exactly_what_the_dockerfile_copies(tmp_path: Path) -> None:
    build = read_dockerfile((ROOT / "Dockerfile").read_text())
    context = build_context()
    assert {"requirements.lock", "pyproject.toml", "cli/main.py"} <= context
    assert not any(
        f.startswith(("tests/", "scripts/", ".git", "monitoring/", ".venv/")) for f in context
    )
    placed = assemble(build.copies, context, tmp_path)
    assert set(placed.values()) == context, "the context holds files no COPY uses"


def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return {name for name, command in group.commands.items() if not command.hidden}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_installs_from_a_clean_checkout_with_every_command(tmp_path: Path) -> None:
    build = read_dockerfile((ROOT / "Dockerfile").read_text())
    context = build_context()
    assert "tests/test_image.py" not in context

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_CACHE_DIR", "PYTHONPATH")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", VIRTUAL_ENV=str(venv), COLUMNS="200")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    # The Dockerfile's steps in its order: the files each `pip` command sees are the ones
    # the COPY lines before it placed; the command runs as written (quieter), in its WORKDIR.
    image_root = tmp_path / "image"
    placed: dict[str, str] = {}
    copied = 0
    for pip in build.pips:
        placed |= assemble(build.copies[copied : pip.copies], context, image_root)
        copied = pip.copies
        quiet = ["--quiet"] if pip.args[0] == "install" else []
        ran = subprocess.run(
            [str(venv / "bin" / "pip"), pip.args[0], *quiet, *pip.args[1:]],
            cwd=image_root / pip.workdir.lstrip("/"),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        said = [
            line
            for line in (ran.stdout + ran.stderr).splitlines()
            if not line.startswith("WARNING: Location")  # a local index this machine lacks
        ]
        assert ran.returncode == 0, f"pip {shlex.join(pip.args)}\n" + "\n".join(said[-60:])
    assert copied == len(build.copies)
    assert set(placed.values()) == context, "the context holds files no COPY uses"

    # Every file copied into a package lands in the installed package: modules, migrations,
    # templates and static files alike (a non-editable install reads nothing from /app).
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    in_packages = [
        relative
        for image_path in placed
        if "/" in (relative := posixpath.relpath(image_path, build.workdir))
    ]
    assert any(f.endswith(".sql") for f in in_packages)
    missing = [f for f in in_packages if not (site / f).is_file()]
    assert not missing, missing
    for sample in (
        "schemas/migrations/0001_initial.sql",
        "ingest/templates/page.html",
        "ingest/static/page.css",
    ):
        assert (site / sample).is_file(), sample

    def signatures(*args: str) -> str:
        done = subprocess.run(
            [str(venv / "bin" / "signatures"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = signatures("--help")
    expected = cli_commands()
    assert {
        "status",
        "dlq",
        "export",
        "reconcile",
        "keys",
        "forget",
        "retention",
        "review",
        "partner",
        "migrate",
    } <= expected
    absent = {name for name in expected if not re.search(rf"(?m)^\W*{re.escape(name)}\s", listed)}
    assert not absent, f"missing from the image's help: {sorted(absent)}\n{listed}"
    assert "Usage: signatures migrate" in signatures("migrate", "--help")
