"""A reader for the top-level Dockerfile: stages, their instructions, and what each image holds."""

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.deploy.workspace import ROOT, importable_from


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on the shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            parts = re.split(r"(?:^|\s)CMD\s+", text, maxsplit=1)
            assert len(parts) == 2, f"HEALTHCHECK {text!r} has no CMD"
            text = parts[1]
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} {self.args!r} is not in exec form"
        return value


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _logical_lines(text: str) -> list[str]:
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    stages: dict[str, Stage]

    def stage(self, name: str) -> Stage:
        assert name in self.stages, f"{self.path.name} has no stage {name!r}"
        return self.stages[name]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [self.stage(name)]
        while chain[-1].base in self.stages:
            chain.append(self.stages[chain[-1].base])
        return chain

    def effective(self, name: str, keyword: str) -> Instruction | None:
        """The instruction in force for a target, inherited through FROM."""
        for stage in self.chain(name):
            found = stage.last(keyword)
            if found is not None:
                return found
        return None

    def venv_package(self, name: str) -> tuple[str, list[str]]:
        """(workspace package, left-out packages) of the venv a target copies in."""
        copies = [i for i in self.stage(name).all("COPY") if i.args.startswith("--from=")]
        sources = [c.args.split()[0].removeprefix("--from=") for c in copies if "/venv" in c.args]
        assert len(sources) == 1, f"target {name} copies {len(sources)} venvs"
        for instruction in self.stage(sources[0]).all("RUN"):
            words = shlex.split(instruction.args)
            if "install-venv" in words and words[words.index("install-venv") + 1] == "app":
                at = words.index("install-venv")
                return words[at + 2], words[at + 3 :]
        raise AssertionError(f"stage {sources[0]} never runs `install-venv app`")

    def importable(self, name: str) -> set[str]:
        return importable_from(self.venv_package(name)[0])


@cache
def read(path: Path = ROOT / "Dockerfile") -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            assert match, f"cannot read FROM {rest!r}"
            base, name = match.group(1), match.group(2) or f"stage-{len(stages)}"
            current = stages[name] = Stage(name, base)
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.instructions.append(Instruction(keyword, rest.strip()))
    return Dockerfile(path, args, stages)
