"""Running an ONNX graph with onnxruntime: its outputs, or every layer's output too (``verify(locate=True)``).

Values a port wrote into the graph object are used in place of the file's.
A layer's output is its last node's first output, which the graph does not
list as an output: it is added, with the type shape inference gives it.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...errors import UsageError


def _model(graph, extra_outputs=()):
    """The ModelProto to run: the file's, with written values and ``extra_outputs`` added; None where the file
    itself will do."""
    import onnx

    if not graph.written and not extra_outputs:
        return None
    model = onnx.load(graph.path, load_external_data=True)
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name in graph.written:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(graph.written[t.name]), t.name))
    if extra_outputs:
        listed = {o.name for o in model.graph.output}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - without types the outputs cannot be added
            return model
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        model.graph.output.extend(known[name] for name in extra_outputs if name in known and name not in listed)
    return model


def _session(graph, model):
    try:
        import onnxruntime
    except ImportError as exc:
        raise UsageError("running an ONNX graph needs onnxruntime: pip install onnxruntime") from exc
    return onnxruntime.InferenceSession(model.SerializeToString() if model is not None else graph.path,
                                        providers=["CPUExecutionProvider"])


def _run(graph, session, inputs) -> list:
    from ..arrays import to_numpy

    specs = session.get_inputs()
    if isinstance(inputs, Mapping):
        given = dict(inputs)
    else:
        values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        given = {spec.name: v for spec, v in zip(specs, values)}
    feed = {spec.name: np.asarray(to_numpy(given[spec.name]), dtype=_ort_dtype(spec.type))
            for spec in specs if spec.name in given}
    try:
        return session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; the message says what is wrong
        raise UsageError(f"{graph.path}: onnxruntime cannot run the graph on these inputs: "
                         f"{str(exc).strip()[:400]}") from exc


def run_graph(graph, inputs):
    """The graph's outputs on ``inputs`` (one array, a list in input order, or a dict by input name)."""
    outputs = _run(graph, _session(graph, _model(graph)), inputs)
    return outputs[0] if len(outputs) == 1 else outputs


def layer_outputs(graph, refs, inputs) -> dict:
    """layer path -> its output on ``inputs``, for the layers whose output onnxruntime can give."""
    wanted = {ref.path: ref.obj.nodes[-1].output[0] for ref in refs if ref.obj.nodes[-1].output}
    session = _session(graph, _model(graph, tuple(dict.fromkeys(wanted.values()))))
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, _run(graph, session, inputs)))
    return {path: values[name] for path, name in wanted.items() if name in values}


def _ort_dtype(spec_type: str):
    return {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}.get(spec_type)
