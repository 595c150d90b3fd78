"""Layout detection reads slot names from the rule registry: a rule registered at run time is recognised."""
import subprocess
import sys

import numpy as np
import pytest

import weightport as wp
from weightport.converter.checkpoint import detect_layout
from weightport.converter.formats import write_checkpoint
from weightport.mappings import rule as rule_module
from weightport.mappings.rule import Registry, Rule, link
from weightport.mappings.transforms import Transpose

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

TORCH_NAMES = ["moe.0.router_gate", "moe.1.router_gate", "head.scores"]
KERAS_NAMES = ["moe_0/router_kernel", "moe_1/router_kernel", "head/scores"]


class RouterRule(Rule):
    """A toy layer whose slots no built-in rule has: ``router_kernel`` (Keras), ``router_gate`` (torch)."""

    name = "toy_router"
    classes = {"keras": ("ToyRouter",), "torch": ("ToyRouter",)}

    def canonical(self, hp):
        return ["router_kernel"]

    def links_torch(self, hp):
        return [link("router_kernel", "router_gate", Transpose(1, 0))]


class ExpertRule(Rule):
    """Slot names that depend on hyperparameters, declared as patterns."""

    name = "toy_experts"
    classes = {"torch": ("ToyExperts",)}
    slot_patterns = {"torch": (r"expert_\d+_up",)}

    def canonical(self, hp):
        return [f"expert_{i}" for i in range(hp["experts"])]

    def links_torch(self, hp):
        return [link(f"expert_{i}", f"expert_{i}_up") for i in range(hp["experts"])]


@pytest.fixture
def registry(monkeypatch):
    fresh = Registry()  # a registry of its own, so the global one is left as it was
    monkeypatch.setattr(rule_module, "registry", fresh)
    return fresh


def test_builtin_slot_names_are_detected():
    assert detect_layout(["rnn.weight_ih_l3_reverse", "rnn.bias_hh_l3_reverse"]) == "torch"
    assert detect_layout(["attn.in_proj_weight", "attn.in_proj_bias"]) == "torch"
    assert detect_layout(["sep/depthwise_kernel:0", "sep/pointwise_kernel:0"]) == "keras"
    assert detect_layout(TORCH_NAMES) is None and detect_layout(KERAS_NAMES) is None


def test_a_rule_registered_at_run_time_is_detected(registry):
    registry.add(RouterRule())
    assert detect_layout(TORCH_NAMES) == "torch"
    assert detect_layout(KERAS_NAMES) == "keras"


def test_declared_slot_patterns_are_detected(registry):
    names = ["ffn.expert_0_up", "ffn.expert_11_up", "ffn.router"]
    assert detect_layout(names) is None
    registry.add(ExpertRule())
    assert detect_layout(names) == "torch"


def test_a_checkpoint_of_new_slots_opens_with_its_layout(registry, tmp_path):
    path = tmp_path / "router.safetensors"
    write_checkpoint(path, {n: np.zeros((3, 2), np.float32) for n in TORCH_NAMES})
    registry.add(RouterRule())
    assert wp.load(path).layout == "torch"


def test_importing_weightport_loads_no_rule_module_and_no_framework():
    code = "import sys, weightport; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for module in ("'weightport.mappings.dense'", "'torch'", "'keras'", "'jax'", "'h5py'"):
        assert module not in loaded
