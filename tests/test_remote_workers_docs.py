"""docs/remote-workers.md and docker-compose.yml give the Redis ACL rule that the
integration test runs under (tests/redis_server.py), and the README links to the page."""

from __future__ import annotations

import re
from pathlib import Path

from tests.redis_server import ACL_RULE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "remote-workers.md"


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_documented_acl_rule_is_the_tested_one() -> None:
    doc = DOC.read_text(encoding="utf-8")
    rule = ACL_RULE.format(password="PASSWORD")
    assert rule in doc.splitlines()
    assert "ACL SETUSER " + rule.removeprefix("user ") in doc.splitlines()
    assert "user default off" in doc.splitlines()


def test_docker_compose_runs_redis_with_the_same_rule() -> None:
    compose = one_line((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    rule = ACL_RULE.format(password="%s")
    assert rule in compose and "user default off" in compose


def test_the_readme_links_to_the_remote_workers_page() -> None:
    assert "(docs/remote-workers.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
