"""The container image the Helm chart runs: Dockerfile and .dockerignore, read statically.

No container engine runs here, so these tests parse the Dockerfile: non-root user matching
the chart, the same pinned install as `make setup` (requirements.lock), a CPU/CUDA build
argument, and a .dockerignore that keeps out what the image must not carry but nothing
the build copies in.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK_FLAG = "-c requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        joined.append(current)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    out = []
    for line in joined:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def test_dockerfile_is_well_formed() -> None:
    steps = instructions()
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL"}
    assert {k for k, _ in steps} <= known, [k for k, _ in steps if k not in known]
    assert [k for k, _ in steps if k not in ("ARG",)][0] == "FROM", "only ARGs may precede FROM"
    assert not any(k == "ADD" for k, _ in steps), "use COPY (ADD fetches URLs and unpacks archives)"
    for keyword, args in steps:
        if keyword in ("CMD", "ENTRYPOINT"):
            assert args.startswith("["), f"{keyword} should use the exec (JSON) form"


def test_image_runs_as_the_non_root_user_the_chart_expects() -> None:
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (lets runAsNonRoot verify it)"
    values = yaml.safe_load((ROOT / "helm" / "dso" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid or uid)
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    last_run = max(i for i, (k, _) in enumerate(instructions()) if k == "RUN")
    last_user = max(i for i, (k, _) in enumerate(instructions()) if k == "USER")
    assert last_user > last_run, "no RUN step may follow the switch to the runtime user"


def test_image_installs_the_package_from_the_same_lock_as_make_setup() -> None:
    installs = [args for keyword, args in instructions() if keyword == "RUN" and "pip install" in args]
    assert len(installs) == 1, "one pip install step"
    pip = shlex.split(installs[0].split("&&")[0])
    assert pip[:2] == ["pip", "install"] and pip[-1] == "."
    assert LOCK_FLAG in " ".join(pip)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*" + re.escape(LOCK_FLAG) + r" -e '\.\[dev\]'", makefile), "make setup installs from the lock"
    readme = (ROOT / "README.md").read_text()
    assert "requirements.lock" in readme and "Dockerfile" in readme, "README says both installs share the lock"
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in lock, "the lock pins plain torch==2.13.0 (the wheel index picks CPU or CUDA)"


def test_cpu_and_cuda_variants_are_one_build_argument() -> None:
    args = {a.split("=")[0]: a.partition("=")[2] for k, a in instructions() if k == "ARG"}
    assert args["TORCH_VARIANT"] == "cpu"
    assert "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"]
    install = next(a for k, a in instructions() if k == "RUN" and "pip install" in a)
    assert '"${TORCH_INDEX_URL}"' in install


def test_everything_copied_exists_and_is_not_docker_ignored() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, pat.rstrip("/")) for pat in patterns for prefix in prefixes)

    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and "--from" not in args:
            sources += shlex.split(args)[:-1]
    assert sources, "the Dockerfile copies the package in"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} is missing"
        assert not ignored(source), f"COPY source {source} is excluded by .dockerignore"
    assert {"pyproject.toml", "requirements.lock", "README.md", "dso"} <= set(sources)  # README: pyproject's readme
    for must_skip in (".venv", ".git", "runs", "tests", "dso/__pycache__/x.pyc"):
        assert ignored(must_skip), f".dockerignore should exclude {must_skip}"
