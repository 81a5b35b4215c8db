"""The README's examples run as written (paths moved under the test's own directory)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_composition_example_runs(tmp_path, capsys):
    code = _block_after("## Many adapters at once").replace('"/tmp/setup"', repr(str(tmp_path / "setup")))
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert "active setup: Stack[lang, mrpc] (adapters skipped in layers 0, 1)" in capsys.readouterr().out
    assert namespace["setup"] == namespace["Stack"]("lang", "mrpc")
    assert len(namespace["sst2_rows"]) == 1 and len(namespace["mrpc_rows"]) == 3
    assert (tmp_path / "setup" / "adapter_setup.json").is_file()
