"""The README's map of the code names files that exist: a newcomer who
opens the file it names for a question finds it there."""

from __future__ import annotations

import re

from queues.tests.live import ROOT


def test_every_path_in_the_readmes_map_exists() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it is built") :]
    answers = re.findall(r"`((?:queues|mqadmin|dashboard|clients|mqtools)/[\w/.]+)`", section)
    assert {"queues/broker/claim.py", "queues/broker/waiting.py", "queues/backends/postgresql.py"} <= set(answers)
    missing = [path for path in answers if not (ROOT / path).exists()]
    assert missing == []
