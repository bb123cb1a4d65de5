"""The offline OpenMoji benchmark suite: `build_suite` writes it, `load_suite` reads it."""

from tsembed.data.suite.build import build_suite
from tsembed.data.suite.config import SuiteConfig
from tsembed.data.suite.load import Suite, load_suite

__all__ = ["Suite", "SuiteConfig", "build_suite", "load_suite"]
