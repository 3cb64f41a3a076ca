import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_lib.sequences.shards import tokenize_array
from pipeline_lib.tokenizer import ESM_ALPHABET, ESM_TOKENS, SAPROT_ALPHABET


def test_esm_vocabulary_is_exact():
    expected = ("<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>").split()
    assert list(ESM_TOKENS) == expected and ESM_ALPHABET.mask_idx == 32 and ESM_ALPHABET.pad_idx == 1


def test_saprot_vocabulary_order():
    t = SAPROT_ALPHABET.tokens
    assert len(t) == 446 and t[:5] == ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>")
    assert t[5] == "Ap" and t[6] == "Ay" and t[25] == "A#" and t[26] == "Cp" and t[-1] == "##"


def test_saprot_pairs_use_lowercase_3di():
    ids = SAPROT_ALPHABET.encode_pairs("MA#", "DP#")
    assert [SAPROT_ALPHABET.tokens[i] for i in ids] == ["<cls>", "Md", "Ap", "##", "<eos>"]


def test_esm_encode_known_ids():
    assert ESM_ALPHABET.encode("MKV") == [0, 20, 15, 7, 2]
    assert ESM_ALPHABET.encode("J") == [0, 3, 2]  # unknown letter -> <unk>


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="LAGVSERTIDPKQNFYMHWCXBUZO", max_size=200), max_size=30))
def test_round_trip_and_vectorized_equals_scalar(seqs):
    arr = pa.array(seqs, type=pa.string())
    vec = tokenize_array(arr).to_pylist()
    assert vec == [ESM_ALPHABET.encode(s) for s in seqs]
    assert [ESM_ALPHABET.decode(v) for v in vec] == seqs
    if len(seqs) > 2:  # sliced arrays (non-zero offset) too
        assert tokenize_array(arr.slice(1)).to_pylist() == vec[1:]
