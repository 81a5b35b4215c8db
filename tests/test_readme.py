"""The README's examples run as written (paths moved under the test's own directory)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks_after(heading: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.mark.slow
def test_the_composition_examples_run(tmp_path, capsys):
    blocks = _blocks_after("## Many adapters at once")
    assert len(blocks) == 2
    namespace = {}
    for code in blocks:
        code = code.replace('"/tmp/setup"', repr(str(tmp_path / "setup")))
        code = code.replace('"/tmp/fusion"', repr(str(tmp_path / "fusion")))
        exec(compile(code, str(README), "exec"), namespace)
    assert "active setup: Stack[lang, mrpc] (adapters skipped in layers 0, 1)" in capsys.readouterr().out
    assert namespace["setup"] == namespace["Stack"]("lang", "mrpc")
    assert len(namespace["sst2_rows"]) == 1 and len(namespace["mrpc_rows"]) == 3
    assert (tmp_path / "setup" / "adapter_setup.json").is_file()
    assert (tmp_path / "fusion" / "adapter_fusion_config.json").is_file()
    assert float(namespace["loss_term"]) > 0


@pytest.mark.slow
def test_the_interop_example_runs(tmp_path, capsys, monkeypatch):
    [code] = _blocks_after("## Bring your PyTorch adapter")
    monkeypatch.chdir(README.parent)
    for name in ("to_peft", "to_adapters", "model.keras"):
        code = code.replace(f'"/tmp/{name}"', repr(str(tmp_path / name)))
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert "active setup: peft_lora" in capsys.readouterr().out
    assert (tmp_path / "to_peft" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "to_adapters" / "adapter.safetensors").is_file()
    assert sorted(namespace["again"].adapters) == ["bn", "peft_lora"]
