"""A saved plan with packed-split steps runs again with no model and no trace, writing the very same tensors.

Phi-3 (transformers) packs q, k, v one after another with grouped-query attention and its MLP's gate and up;
Bloom packs q, k, v head by head; keras-hub keeps a layer each. What settled the layout the first time (a traced
run of the file's own model) is absent on replay: the plan's steps record the packed tensors and where each part
lies. Both directions: a packed HF file into keras-hub's separate-layer layout, and that file back into HF's
packed layout (which loads with a strict ``load_state_dict``, equal to the original model bit for bit).
"""
import json

import numpy as np
import pytest

import weightport as wp

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

from test_cli import run  # noqa: E402
from test_packed_split import bloom_hf, bloom_kh, phi3_config, phi3_hf, phi3_kh  # noqa: E402

FAMILIES = {"phi3": (phi3_hf, phi3_kh, lambda: transformers.Phi3ForCausalLM(phi3_config())),
            "bloom": (bloom_hf, bloom_kh, lambda: bloom_hf(seed=9))}


def tensors(path) -> dict:
    ckpt = wp.load(path)
    return {name: np.array(ckpt[name]) for name in ckpt}


def assert_bitwise(a, b):
    ta, tb = tensors(a), tensors(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and ta[name].shape == tb[name].shape, name
        assert ta[name].tobytes() == tb[name].tobytes(), name


def differing(a, b) -> set:
    ta, tb = tensors(a), tensors(b)
    return {name for name in ta if ta[name].tobytes() != tb[name].tobytes()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Per family: the HF file, its direct conversion into keras-hub's layout (the model's traced run settling
    the packed layout), and the plans of both directions, saved as JSON."""
    out = {}
    for name, (hf, kh, own) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(name)
        hf().save_pretrained(folder)
        src, sep, packed = folder / "model.safetensors", folder / "separate.safetensors", folder / "packed.safetensors"
        wp.convert(src, sep, like=kh(), model=own())
        wp.convert(sep, packed, like=hf(seed=3))
        plans = {}
        for key, (source, kwargs) in {"split": (src, dict(like=kh(), model=own())),
                                      "merge": (sep, dict(like=hf(seed=3)))}.items():
            plans[key] = folder / f"{key}.json"
            plans[key].write_text(wp.convert(source, folder / "unused.safetensors", dry_run=True, **kwargs).to_json())
        out[name] = {"src": src, "sep": sep, "packed": packed, "plans": plans, "folder": folder}
    return out


def edited(plan_path, tmp_path, change) -> str:
    """The plan at ``plan_path`` with ``change(record)`` applied to every cut it records, saved beside."""
    data = json.loads(plan_path.read_text())
    for step in data["steps"]:
        split = step.get("split") or {}
        for record in [split["cut"]] if "cut" in split else [q["cut"] for q in split.get("parts", [])]:
            change(record)
    path = tmp_path / f"edited-{plan_path.name}"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("family", ["phi3", "bloom"])
def test_packed_file_into_separate_layers_replays_bitwise(made, family, tmp_path):
    m = made[family]
    plan = json.loads(m["plans"]["split"].read_text())
    layouts = {s["split"]["cut"]["layout"] for s in plan["steps"] if s["split"]}
    assert plan["version"] == 2 and layouts == {"per_head" if family == "bloom" else "blocks"}
    wp.convert(m["src"], tmp_path / "replayed.safetensors", plan=str(m["plans"]["split"]))  # no model, no trace
    assert_bitwise(tmp_path / "replayed.safetensors", m["sep"])


@pytest.mark.parametrize("family", ["phi3", "bloom"])
def test_separate_layers_into_the_packed_file_replay_bitwise_and_load_strictly(made, family, tmp_path):
    from safetensors.torch import load_file

    m = made[family]
    plan = json.loads(m["plans"]["merge"].read_text())
    assert any(len(s["split"].get("parts", [])) in (2, 3) for s in plan["steps"])
    out = tmp_path / "replayed.safetensors"
    wp.convert(m["sep"], out, plan=str(m["plans"]["merge"]))
    assert_bitwise(out, m["packed"])
    hf_model, original = FAMILIES[family][0](seed=4), FAMILIES[family][0]()
    hf_model.load_state_dict(load_file(out))  # strict: every packed tensor whole, under its own name
    for (name, a), b in zip(hf_model.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), name  # HF -> keras-hub layout -> HF is the identity


def test_the_command_line_saves_and_replays_a_split_plan(made, tmp_path):
    m = made["bloom"]
    (tmp_path / "models.py").write_text("import keras_hub\n\ndef kh():\n    return keras_hub.models.BloomBackbone("
                                        "vocabulary_size=101, num_layers=2, num_heads=4, hidden_dim=48, "
                                        "intermediate_dim=192)\n")
    direct = ("convert", m["src"], "direct.safetensors", "--like", "models.py:kh", "--option", "packed_qkv=per_head")
    for args in (direct, direct + ("--dry-run", "--save-plan", "plan.json"),
                 ("convert", m["src"], "out.safetensors", "--plan", "plan.json")):
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / "x.safetensors").exists()
    assert_bitwise(tmp_path / "out.safetensors", tmp_path / "direct.safetensors")


@pytest.mark.parametrize("direction", ["split", "merge"])
def test_sharded_replay_runs_split_steps_in_units_bitwise(made, direction, tmp_path):
    m = made["phi3"]
    source, direct = (m["src"], m["sep"]) if direction == "split" else (m["sep"], m["packed"])
    report = wp.convert(source, tmp_path / "model.safetensors", plan=str(m["plans"][direction]), shard_size="40KB")
    assert len(report.shards["written"]) > 2  # one unit per shard, each replaying its steps in the worker's way
    assert_bitwise(tmp_path / "model.safetensors.index.json", direct)


def test_negative_control_an_edited_layout_gives_other_tensors(made, tmp_path):
    m = made["bloom"]
    for direction, source, direct in (("split", m["src"], m["sep"]), ("merge", m["sep"], m["packed"])):
        plan = edited(m["plans"][direction], tmp_path, lambda cut: cut.update(layout="blocks"))
        wp.convert(source, tmp_path / f"{direction}.safetensors", plan=plan)
        changed = differing(tmp_path / f"{direction}.safetensors", direct)
        assert changed and all(("query" in n or "key" in n or "value" in n) for n in changed), changed
    m = made["phi3"]  # Phi-3's gate and up blocks swapped in the plan: other tensors too
    plan = edited(m["plans"]["split"], tmp_path, lambda cut: cut.update(
        start={"gate": 64, "up": 0}[cut["role"]]) if cut["role"] in ("gate", "up") else None)
    wp.convert(m["src"], tmp_path / "swapped.safetensors", plan=plan)
    changed = differing(tmp_path / "swapped.safetensors", m["sep"])
    assert changed and all("feedforward_gate_dense" in n or "feedforward_intermediate_dense" in n for n in changed)


def test_negative_control_a_slice_that_does_not_fit_is_refused_before_writing(made, tmp_path):
    m = made["phi3"]
    out = tmp_path / "out.safetensors"
    plan = edited(m["plans"]["split"], tmp_path, lambda cut: cut.update(start=cut["start"] + 40))
    with pytest.raises(wp.ShapeMismatchError, match=r"qkv_proj.*'key' takes outputs 88\.\.111 \(blocks\).*96 outputs"):
        wp.convert(m["src"], out, plan=plan)
    plan = edited(m["plans"]["split"], tmp_path, lambda cut: cut.update(layout="per_head"))
    with pytest.raises(wp.ShapeMismatchError, match="head by head"):  # grouped-query parts: 48 + 24 + 24
        wp.convert(m["src"], out, plan=plan)
    plan = edited(m["plans"]["merge"], tmp_path, lambda cut: cut.update(start=0))  # parts overlap, rows left out
    with pytest.raises(wp.ShapeMismatchError, match=r"qkv_proj.*write 96 outputs \(48 distinct\).*written once"):
        wp.convert(m["sep"], out, plan=plan)
    smaller = phi3_config()
    smaller.intermediate_size = 40  # the same names, a gate_up_proj of 80 rows
    transformers.Phi3ForCausalLM(smaller).save_pretrained(tmp_path / "small")
    expected = r"gate_up_proj.*has shapes \[\(48, 80\)\], the plan expects \[\(48, 128\)\]"
    with pytest.raises(wp.ShapeMismatchError, match=expected):
        wp.convert(tmp_path / "small" / "model.safetensors", out, plan=str(m["plans"]["split"]))
    assert not out.exists()


def test_an_old_plan_without_the_split_record_is_refused_clearly(made, tmp_path):
    m = made["phi3"]
    data = json.loads(m["plans"]["split"].read_text())
    del data["version"]
    for step in data["steps"]:
        del step["split"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(wp.UsageError, match=r"qkv_proj\[query\].*version 1.*does not record where its parts lie"):
        wp.convert(m["src"], tmp_path / "out.safetensors", plan=str(tmp_path / "old.json"))
    data = json.loads(m["plans"]["split"].read_text())
    next(s for s in data["steps"] if s["split"])["split"]["packed"].pop("names")
    (tmp_path / "gap.json").write_text(json.dumps(data))
    with pytest.raises(wp.UsageError, match=r"qkv_proj\[query\].*lacks 'names'"):
        wp.convert(m["src"], tmp_path / "out.safetensors", plan=str(tmp_path / "gap.json"))
    data = {**json.loads(m["plans"]["split"].read_text()), "version": 99}
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(wp.UsageError, match="version 99"):
        wp.convert(m["src"], tmp_path / "out.safetensors", plan=str(tmp_path / "new.json"))
    assert not (tmp_path / "out.safetensors").exists()
