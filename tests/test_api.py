"""The top-level API: what users import first, what importing it costs, and errors for missing extras."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tsembed
from tsembed.backbones import testing as tiny
from tsembed.errors import MissingExtraError, TsembedError
from tsembed.extras import OPTIONAL_MODULES, require

DEMO_MODULES = sorted(m for m, (_, extra) in OPTIONAL_MODULES.items() if extra == "demo")


def _run(code: str) -> subprocess.CompletedProcess:
    src = str(Path(tsembed.__file__).parents[1])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_top_level_exports_the_user_facing_api():
    from tsembed import EmbedInput, Encoder, TSEmbedModel, load_model
    from tsembed.inference.encoder import Encoder as InferenceEncoder
    from tsembed.inputs import EmbedInput as CoreEmbedInput

    assert Encoder is InferenceEncoder and EmbedInput is CoreEmbedInput
    assert callable(load_model) and hasattr(TSEmbedModel, "from_pretrained") and hasattr(Encoder, "from_pretrained")
    assert set(tsembed.__all__) <= set(dir(tsembed))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tsembed.Nope  # noqa: B018


def test_lazy_names_match_the_type_checking_imports():
    """``_EXPORTS`` (runtime) and the ``TYPE_CHECKING`` block (IDEs) list the same names from the same modules."""
    tree = ast.parse(Path(tsembed.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in block.body for alias in node.names}
    assert typed == tsembed._EXPORTS
    errors = {"AdapterError", "ConfigError", "DataError", "MissingExtraError", "TsembedError"}
    assert set(tsembed.__all__) == set(tsembed._EXPORTS) | errors | {"__version__"}


def test_import_and_help_do_not_load_torch():
    probe = _run("import sys, tsembed; print('torch' in sys.modules)")
    assert probe.returncode == 0 and probe.stdout.strip() == "False", probe.stderr
    probe = _run("import sys; sys.argv = ['tsembed', '--help']\nfrom tsembed.cli import main\nrc = main()\n"
                 "print('torch' in sys.modules, rc)")
    assert probe.returncode == 0 and probe.stdout.strip().endswith("False 0"), probe.stderr
    assert "serve" in probe.stdout and "export" in probe.stdout


def test_library_imports_without_the_demo_extra():
    blocked = "".join(f"sys.modules[{m!r}] = None\n" for m in DEMO_MODULES)  # as if not installed
    code = (f"import sys\n{blocked}"
            "import tsembed.backbones, tsembed.model, tsembed.training.trainer, tsembed.evaluation.harness\n"
            "from tsembed import Encoder, TSEmbedModel\n"
            "from tsembed.backbones import MiniLMEfficientNetBackbone\n"
            "try:\n    MiniLMEfficientNetBackbone()\nexcept ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    probe = _run(code)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("MissingExtraError") and "pip install 'tsembed[demo]'" in probe.stdout


@pytest.mark.parametrize("module", DEMO_MODULES)
def test_each_demo_package_names_the_demo_extra(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=r"\[demo\]") as info:
        require(module, "the test")
    assert isinstance(info.value, TsembedError) and isinstance(info.value, ImportError)
    assert OPTIONAL_MODULES[module][0] in str(info.value)


def test_default_backbone_without_the_vision_package_names_the_extra(tiny_bert_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingExtraError, match=r"minilm-effnet .*'efficientnet-lite-pytorch'.*tsembed\[demo\]"):
        tiny.build_tiny_minilm_effnet(tiny_bert_dir)


def test_require_leaves_other_import_errors_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError, match=r"tsembed\[search\]"):
        require("faiss", "vector search")
    with pytest.raises(KeyError, match="not a registered optional dependency"):
        require("numpy", "x")
