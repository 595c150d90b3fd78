"""What a layer's path says about it: the words that tell look-alike layers apart, and their block numbers.

Two implementations name one layer differently (``attention.self.query``,
``_query_dense``, ``q_proj``, ``wq``), so paths are reduced to canonical words
first: camelCase and digits split off, plurals dropped, and the usual
synonyms folded into one word each (``q``/``wq``/``query`` -> ``query``,
``ln``/``layer_norm``/``bn`` -> ``norm``, ``wte``/``embed_tokens`` -> ``tokemb``...).
Names are evidence, not proof: the matcher trusts dataflow over them where a
model can be run, and the report says which pairs rest on names.
"""
from __future__ import annotations

import functools
import re

# phrases first (they span separators), then single words
PHRASES = (
    # pre-norm decoders (Hugging Face's Llama family): the block's input norm feeds attention, the norm after
    # attention feeds the MLP; "post_attention" must not read as "attention". Gemma 2 adds a norm on the
    # attention's output under that very name: the literal name stays a word too, so it agrees most with itself
    (r"input_(layer_?)?norm", "attention_norm"),
    (r"post_attention_(layer_?)?norm", "mlp_norm_postattention"),
    (r"embed_tokens?|word_embeddings?|token_embeddings?|tok_embeddings?|wte", "tokemb"),
    (r"position_embeddings?|pos_embed(dings?)?|wpe", "posemb"),
    (r"(layer|rms|batch|group)_?norm(alization)?", "norm"),
    # a decoder's attention over the encoder's output: named for the encoder by Hugging Face (BART, Whisper:
    # ``encoder_attn``; T5: ``EncDecAttention``), "cross" elsewhere; "encoder" there must not place it in the encoder
    (r"encoder_attn|enc_dec_attention|encdec_attention|cross_attn|crossattention", "cross_attention"),
    (r"self_attn|self_attention|attn|sa", "attention"),
    (r"feed_?forward|ffn|ffw|ff", "mlp"),
    (r"up_proj|c_fc|fc_?1|intermediate", "up"),
    (r"down_proj|fc_?2", "down"),
    (r"gate_proj", "gate"),
    (r"q_proj|q_lin|to_q", "query"),
    (r"k_proj|k_lin|to_k", "key"),
    (r"v_proj|v_lin|to_v", "value"),
    (r"o_proj|out_proj|out_lin|to_out", "output"),
)
WORDS = {
    "q": "query", "wq": "query", "queries": "query",
    "k": "key", "wk": "key", "keys": "key",
    "v": "value", "wv": "value", "values": "value",
    "o": "output", "out": "output", "wo": "output",
    "ln": "norm", "bn": "norm", "layernorm": "norm", "rmsnorm": "norm", "batchnorm": "norm",
    "embeddings": "embedding", "embed": "embedding", "emb": "embedding",
}
# words that say which of two look-alikes in a block comes first (layernorm_before, layer_norm_1)
ORDINALS = {"before": 1, "pre": 1, "first": 1, "after": 2, "post": 2, "second": 2}
NOISE = {"self", "dense", "proj", "projection", "module", "layers", "layer", "weight", "kernel", "c", "h", "model"}


def ordinal(path: str):
    """1, 2... where a path's last component says which look-alike of a block it is, else None.

    From an ordinal word (``before``/``after``, ``pre``/``post``) or a small
    number ending the component after a word (``layer_norm_2``, ``bn1``); a
    component that is only a number is an index among siblings, not this.
    """
    last = last_part(path)
    found = [ORDINALS[w] for w in re.split(r"[^a-z]+", last.lower()) if w in ORDINALS]
    if len(found) == 1:
        return found[0]
    digits = re.fullmatch(r"[A-Za-z][A-Za-z_]*?_?([1-3])", last)
    return int(digits.group(1)) if digits else None


def last_part(path) -> str:
    """A path's last component, dotted (torch) or ``/``-joined (Keras) alike."""
    return re.split(r"[./]", str(path))[-1]


def snake(class_name: str) -> str:
    """``LayerNormalization`` -> ``layer_normalization``: how Keras names a layer it was not given a name for."""
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)).lower()


def auto_named(path: str, class_name: str) -> bool:
    """Whether a path's last component is a name Keras made up (``dense_3``): its number counts layers built."""
    last = last_part(path)
    return re.fullmatch(re.escape(snake(class_name)) + r"(_\d+)?", last) is not None


def words(path: str, class_name: str = "") -> frozenset:
    """The canonical words of a layer path (numbers and noise words left out), with its ordinal as ``#n``.

    ``class_name`` (the layer's class, where known) keeps a made-up Keras name's
    counter (``layer_normalization_1``) from passing for an ordinal. Kept per
    path: pairing asks for each layer's words many times over.
    """
    return path_words(str(path), class_name)


@functools.lru_cache(maxsize=4096)
def path_words(path: str, class_name: str) -> frozenset:
    """``words``, of a path given as a string."""
    text = re.sub(r"([a-z])([A-Z])", r"\1_\2", str(path)).lower()
    text = re.sub(r"[^a-z0-9]+", "_", text)
    text = re.sub(r"([a-z])(\d)", r"\1_\2", re.sub(r"(\d)([a-z])", r"\1_\2", text))
    text = f"_{text}_"
    for pattern, word in PHRASES:  # whole words only: the text is "_"-delimited
        text = re.sub(f"(?<=_)(?:{pattern})(?=_)", word, text)
    out = set()
    for w in text.split("_"):
        if not w or w.isdigit():
            continue
        w = WORDS.get(w, w)
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        if w not in NOISE and w not in ORDINALS:
            out.add(w)
    rank = None if class_name and auto_named(path, class_name) else ordinal(path)
    if rank is not None:
        out.add(f"#{rank}")
    return frozenset(out)


def numbers(path: str) -> tuple:
    """The numbers in a path, in order: its position among repeated blocks (``layers.3.mlp`` -> (3,)).

    An ordinal ending the last component (``ln_1``, ``bn2``) says which of a
    block's look-alikes it is, not which block: left out; so is a Keras
    ``_N`` suffix repeating the number just before it.
    """
    path = str(path)
    if ordinal(path) is not None:
        path = re.sub(r"_?\d$", "", path)
    found = []
    for part in re.finditer(r"(_?)(\d+)", path):
        n = int(part.group(2))
        # Keras numbers a name taken again (``moe_block_1`` in block 1): the block's number, not another level
        if not (part.group(1) and found and found[-1] == n):
            found.append(n)
    return tuple(found)


def level_numbers(path: str) -> tuple:
    """``numbers`` without Keras' ``_N`` name suffixes (``moe_block_6`` in block 0 of a model built after
    others): only the numbers that are path levels of their own (``layers/0``, ``h.3``)."""
    return numbers(re.sub(r"_\d+(?=$|[/.])", "", str(path)))


def slot_numbers(path: str) -> tuple:
    """Every number the path's ``template`` blanks, in order, with no rule dropping any: paths sharing one
    template get as many, slot for slot (``stage_1_block_1`` is (1, 1); ``numbers`` reads its second 1 as a
    Keras name suffix repeating the first, and numbers its siblings ``block_0``, ``block_2`` with other lengths)."""
    return tuple(int(n) for n in re.findall(r"\d+", re.sub(r"_\d+(?=$|[/.])", "", str(path))))


def numbered_evenly(number, paths: list) -> bool:
    """Whether ``number`` gives paths of one template as many numbers each: where it does not, it misreads
    some (a block number taken for a name suffix), and their order by it pairs blocks wrongly."""
    return len({len(number(p)) for p in paths}) <= 1


def common_numbering(src: list, tgt: list):
    """How to number two sides' look-alike paths in repeated blocks: by all their numbers, or, where that
    numbers the sides unalike, by every number of their templates' slots, or by path levels alone, if either
    tells each side's paths apart and numbers both sides alike (a Keras name suffix counts models built before,
    not blocks), or by the numbers that vary within each side, if those do."""
    if sorted(map(numbers, src)) == sorted(map(numbers, tgt)):
        return numbers
    by_slot = [sorted(map(slot_numbers, side)) for side in (src, tgt)]
    if by_slot[0] == by_slot[1] and len(set(by_slot[0])) == len(src) and len(set(map(template, src))) == 1 \
            and len(set(map(template, tgt))) == 1:
        return slot_numbers
    by_level = [sorted(map(level_numbers, side)) for side in (src, tgt)]
    if by_level[0] == by_level[1] and len(set(by_level[0])) == len(src):
        return level_numbers
    varying = {**_varying_numbers(src), **_varying_numbers(tgt)}
    if len(varying) == len(src) + len(tgt) and sorted(varying[p] for p in src) == sorted(varying[p] for p in tgt) \
            and len({varying[p] for p in src}) == len(src):
        return lambda path: varying.get(path, numbers(path))
    return numbers


def _varying_numbers(paths: list) -> dict:
    """path -> its numbers without those every path of the side shares (T5's ``block.3.layer.1``: every
    cross-attention is sub-layer 1, so only the block's number tells them apart); {} where the paths hold
    different counts of numbers."""
    found = [numbers(p) for p in paths]
    if len({len(n) for n in found}) != 1:
        return {}
    keep = [i for i in range(len(found[0])) if len({n[i] for n in found}) > 1]
    return {p: tuple(n[i] for i in keep) for p, n in zip(paths, found)}


def template(path: str) -> str:
    """A path with its numbers blanked, and Keras' ``_1`` suffixes dropped, so repeated blocks share one."""
    path = re.sub(r"_\d+(?=$|[/.])", "", str(path))
    return re.sub(r"\d+", "#", path)


# words naming different members of one family: layers they name are not each other's
FAMILIES = (frozenset({"attention", "mlp"}), frozenset({"query", "key", "value", "output"}),
            frozenset({"up", "down", "gate"}), frozenset({"tokemb", "posemb"}), frozenset({"#1", "#2", "#3"}),
            frozenset({"encoder", "decoder"}))


def clash(a: frozenset, b: frozenset) -> bool:
    """Whether two paths' words name different members of one family (an attention's output against an MLP's;
    a query against a key): then no amount of other agreement pairs them."""
    return any((a & f) and (b & f) and not (a & b & f) for f in FAMILIES)


def abbreviates(short: str, long: str) -> bool:
    """``attn`` for ``attention``, ``out`` for ``output``: same first letter, the rest in order."""
    if short == long:
        return True
    if len(short) < 2 or short[0] != long[0]:
        return False
    rest = iter(long)
    return all(ch in rest for ch in short)


def agree(a: str, b: str) -> bool:
    if a.startswith("#") or b.startswith("#"):
        return a == b
    if {a, b} & EMBEDDINGS and "embedding" in (a, b):  # ``embeddings_layer_norm`` is the word table's norm
        return True
    return abbreviates(*sorted((a, b), key=len))


EMBEDDINGS = frozenset({"tokemb", "posemb"})
