"""Refusals for layers left unpaired print what is built from those layers, never the placeholder
``hints={source_path: target_path}``: a guess said to be one, each path with its choices, the shapes that rule
hints out, or that nothing is left.
"""
import ast
import re
import warnings

import numpy as np
import pytest

import weightport as wp
from util import randomize_torch
from weightport import exits

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
nn = torch.nn

V, H, L, NH, MLP, SEQ = 101, 48, 2, 4, 64, 32
PLACEHOLDER = re.compile(r"source[_ ]path: target[_ ]path")


def refusal(error, source, target, **kw):
    with pytest.raises(error) as refused:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wp.WeightportWarning)
            wp.port(source, target, **kw)
    message = str(refused.value)
    assert not PLACEHOLDER.search(message), message
    return message


def test_a_target_layer_the_source_lacks_says_no_hint_can_fill_it():
    """transformers' ElectraModel has no pooler; keras-hub's ElectraBackbone has one."""
    hf = transformers.ElectraModel(transformers.ElectraConfig(
        vocab_size=V, embedding_size=24, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
        intermediate_size=MLP, max_position_embeddings=SEQ))
    kh = keras_hub.models.ElectraBackbone(vocab_size=V, num_layers=L, num_heads=NH, hidden_dim=H, embedding_dim=24,
                                          intermediate_dim=MLP, max_sequence_length=SEQ)
    message = refusal(wp.MatchError, hf, kh)
    assert "target: pooled_dense" in message
    assert "The source has no layer left to pair with it, so no hints= line can fill it" in message
    assert "hints={" not in message


def test_layers_configured_apart_are_named_with_their_shapes_and_no_hint_is_offered():
    """A BERT whose feed-forward is 64 wide against a keras-hub one 72 wide: names say which would pair, shapes
    say they cannot."""
    hf = transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L,
                                                        num_attention_heads=NH, intermediate_size=MLP,
                                                        max_position_embeddings=SEQ))
    kh = keras_hub.models.BertBackbone(vocabulary_size=V, num_layers=L, num_heads=NH, hidden_dim=H,
                                       intermediate_dim=72, max_sequence_length=SEQ)
    message = refusal(wp.MatchError, hf, kh)
    assert ("As the likeliest counterparts left, encoder.layer.0.intermediate.dense (dense, 48x64, 64) would be "
            "transformer_layers/0/feedforward_intermediate_dense, which needs 48x72, 72") in message
    assert message.count("no hint pairs layers of other shapes") == 4 and "hints={" not in message


class Scaled(nn.Module):
    """A Linear and two bare vectors of one shape: nothing in their names says which one the Keras gain is."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 5)
        self.scale = nn.Parameter(torch.randn(5))
        self.shift = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.fc(x) * self.scale + 0 * self.shift


class Gain(keras.layers.Layer):
    def build(self, shape):
        self.gain = self.add_weight(shape=(5,), name="gain")

    def call(self, x):
        return x * self.gain


class WithOddVector(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 5)
        self.scale = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("source", ["nothing left", "another shape left"])
def test_a_bare_target_weight_no_rule_handles_says_why_no_hint_fills_it(source):
    t = nn.Sequential(nn.Linear(7, 5)) if source == "nothing left" else WithOddVector()
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), Gain(name="g")])
    message = refusal(wp.UnsupportedLayerError, t, k)
    assert "holds the weight 'gain' (5,)" in message and "hints={" not in message
    if source == "nothing left":
        assert "The source has no layer left to pair with it, so no hints= line can fill it" in message
    else:
        assert "scale (parameter, 3) would be g/gain, which needs 5" in message


def choices(message) -> dict:
    """The dict of source path -> '<one of: a | b>' the message prints for look-alikes names do not guess."""
    found = [ast.literal_eval(line) for line in re.findall(r"^  (\{.*<one of: .*\})$", message, re.M)]
    assert len(found) == 1, message
    return {s: v[len("<one of: "):-1].split(" | ") for s, v in found[0].items()}


def test_look_alikes_names_cannot_tell_get_every_path_and_its_choices_never_an_order():
    t = Scaled()
    randomize_torch(t)
    make = lambda: keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), Gain(name="g")])  # noqa: E731
    message = refusal(wp.AmbiguityError, t, make())
    assert choices(message) == {"scale": ["g/gain"], "shift": ["g/gain"]}  # concrete: the layers listed
    assert "hints={" not in message  # no pairing is printed as if known
    unedited = re.search(r"^  (\{.*\})$", message, re.M).group(1)
    with pytest.raises(wp.UsageError, match="not among the target's rule-bearing layers"):
        wp.port(t, make(), hints=ast.literal_eval(unedited))  # pasted as it is: refused, not guessed
    x = np.random.default_rng(0).standard_normal((3, 7)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(t, make(), hints={"scale": "g/gain"}, check=x)  # the right choice, checked: ported
        wrong = make()
        before = wrong.get_weights()
        with pytest.raises(wp.VerificationError):  # the other choice, checked: refused, the target restored
            wp.port(t, wrong, hints={"shift": "g/gain"}, check=x)
    for a, b in zip(before, wrong.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_xlnet_refusal_prints_the_guess_line_and_the_choices_for_the_rest():
    """keras-hub's XLNet: names guess q/k/v/o/r and the norms (a line, said to be a guess); its three per-block
    biases are not guessed: each comes with the three it may be. Chosen as keras-hub's own conversion does, the
    lines port."""
    hf = transformers.XLNetModel(transformers.XLNetConfig(vocab_size=V, d_model=H, n_layer=L, n_head=NH, d_inner=MLP,
                                                          ff_activation="gelu", dropout=0.0, pad_token_id=1)).eval()
    make = lambda: keras_hub.models.XLNetBackbone(  # noqa: E731
        vocabulary_size=V, num_layers=L, num_heads=NH, hidden_dim=H, intermediate_dim=MLP, dropout=0.0,
        activation="gelu")
    message = refusal(wp.AmbiguityError, hf, make())
    assert "is a guess" in message and "Names do not guess the rest" in message
    line = ast.literal_eval(message.rpartition("hints=")[2].strip())
    assert line["layer.0.rel_attn.q"] == "transformer_layers/0/relative_attention/query"
    offered = choices(message)
    assert set(offered) == {f"layer.{i}.rel_attn.r_{x}_bias" for i in range(L) for x in "rsw"}
    own = {"w": "content", "r": "positional", "s": "segment"}  # keras-hub's convert_xlnet_checkpoints.py
    for i in range(L):
        for x, name in own.items():
            chosen = f"transformer_layers/{i}/{name}_attention_bias"
            assert chosen in offered[f"layer.{i}.rel_attn.r_{x}_bias"]
            line[f"layer.{i}.rel_attn.r_{x}_bias"] = chosen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, make(), hints=line)
    made = {(step.source, step.target) for step in report.steps}
    assert all((a, b) in made for a, b in line.items()), sorted(made)  # each pasted pair made as printed


def test_a_printed_hints_line_becomes_hint_options_on_the_command_line():
    text = "pass:\n  hints={'layer.0.q': 'blocks/0/query', 'a b': 'c'}"
    assert exits.cli_words(text) == "pass:\n  --hint layer.0.q=blocks/0/query --hint 'a b=c'"
    assert exits.cli_words("Pass hints={source_path: target_path}") == "Pass --hint SOURCE=TARGET"


def test_a_pairing_the_dataflow_contradicts_names_the_layer_the_dataflow_points_to():
    """Three look-alike projections in a chain, paired by name with the last two crossed: the refusal names, as a
    guess to check, the target that reads what the source's counterpart feeds (and never the crossed one)."""
    from weightport.converter import sides
    from weightport.converter.evidence import Pairing
    from weightport.converter.flow import Flow
    from weightport.converter.pairs import pair

    t = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5))
    k = keras.Sequential([keras.Input((5,))] + [keras.layers.Dense(5, name=f"d{i}") for i in range(3)])
    src, tgt = sides.live_nodes(t, "source", True)[1], sides.live_nodes(k, "target", True)[1]
    chain = lambda nodes: Flow(feeds={n.path: ({nodes[i - 1].path} if i else set())  # noqa: E731
                                      for i, n in enumerate(nodes)}, order=[n.path for n in nodes])
    pairing = Pairing(src, tgt, lambda s, t, side: chain(src if side == 0 else tgt))
    pairing.pairs = [pair(src[0], tgt[0], "name"), pair(src[1], tgt[2], "name"), pair(src[2], tgt[1], "name")]
    with pytest.raises(wp.MatchError, match="dataflow disagrees") as refused:
        pairing.check_against_flow()
    message = str(refused.value)
    assert not PLACEHOLDER.search(message) and "is a guess" in message
    assert ast.literal_eval(message.rpartition("hints=")[2].strip()) == {"1": tgt[1].path}


def test_where_no_target_reads_the_counterparts_the_look_alikes_are_listed_without_a_pairing():
    """Negative control: the dataflow points to no single target, so no hints= pair is printed, only the choice."""
    from weightport.converter import sides
    from weightport.converter.evidence import Pairing
    from weightport.converter.flow import Flow
    from weightport.converter.pairs import pair

    t = nn.Sequential(*[nn.Linear(5, 5) for _ in range(4)])
    k = keras.Sequential([keras.Input((5,))] + [keras.layers.Dense(5, name=f"d{i}") for i in range(4)])
    src, tgt = sides.live_nodes(t, "source", True)[1], sides.live_nodes(k, "target", True)[1]
    s, d = [n.path for n in src], [n.path for n in tgt]
    flows = (Flow(feeds={s[0]: set(), s[1]: {s[0]}, s[2]: {s[1]}, s[3]: {s[2]}}),
             Flow(feeds={d[0]: set(), d[1]: {d[0]}, d[2]: {d[1]}, d[3]: {d[1]}}))  # d2 and d3 both read d1
    pairing = Pairing(src, tgt, lambda a, b, side: flows[side])
    pairing.pairs = [pair(src[i], tgt[j], "name") for i, j in ((0, 0), (1, 1), (2, 3), (3, 2))]
    with pytest.raises(wp.MatchError, match="dataflow disagrees") as refused:
        pairing.check_against_flow()
    message = str(refused.value)
    assert "hints={" not in message and not PLACEHOLDER.search(message)
    assert f"Pass hints= pairing '{s[3]}' with the right one of the target's look-alikes" in message
    assert all(repr(p) in message for p in d)
