"""docs/config.md states the defaults the code has: every documented section against the dataclasses."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from crossfuse.config.schema import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _documented():
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    return yaml.safe_load(block)


def _compare(doc, code, path, problems):
    for key in set(doc) | set(code):
        where = f"{path}.{key}" if path else key
        if key not in doc:
            problems.append(f"{where}: in the code ({code[key]!r}), not in docs/config.md")
        elif key not in code:
            problems.append(f"{where}: in docs/config.md, not in the code")
        elif isinstance(code[key], dict) and isinstance(doc[key], dict):
            _compare(doc[key], code[key], where, problems)
        elif doc[key] != code[key]:
            problems.append(f"{where}: docs/config.md says {doc[key]!r}, the code {code[key]!r}")


def test_documented_defaults_are_the_codes():
    doc, code = _documented(), Config().to_dict()
    doc["data"]["manifest"] = code["data"]["manifest"]  # required: the doc shows an example path
    del doc["modalities"], code["modalities"]  # examples, not defaults
    problems = []
    _compare(doc, code, "", problems)
    assert not problems, "\n".join(problems)


def test_documented_modality_kinds_are_the_codes():
    from crossfuse.data.processors import PROCESSORS

    line = next(l for l in DOC.read_text().splitlines() if l.strip().startswith("kind: image "))
    assert set(re.findall(r"\w+", line.split("#")[1])) == set(PROCESSORS)
