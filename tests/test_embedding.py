import torch

from sdecore import Embedder

TEXT = "How can I improve my sleep? Keep a regular schedule, unbelievably simple."


def test_default_table_and_support(embedder):
    assert embedder.table.shape == (30522, 384)
    vocab = embedder.tokenizer.get_vocab()
    for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"):
        assert not embedder.support_mask[vocab[tok]], tok
    assert embedder.support_mask.sum() > 29000


def test_encode_then_decode_round_trips(embedder):
    ids = embedder.encode(TEXT)
    assert embedder.decode(ids) == TEXT.lower()
    assert embedder.encode(embedder.decode(ids)) == ids
    assert all(embedder.support_mask[i] for i in ids)
    assert embedder.tokens(ids)[:3] == ["how", "can", "i"]


def test_special_tokens_are_dropped(embedder):
    assert all(embedder.support_mask[i] for i in embedder.encode("emoji 😀 here [MASK]"))


def test_fingerprint_is_stable_and_sensitive(embedder):
    again = Embedder.default()
    assert again.fingerprint == embedder.fingerprint
    table = embedder.table.clone()
    table[5, 0] += 1e-3
    assert Embedder("x", embedder.tokenizer, table, set()).fingerprint != embedder.fingerprint


def test_any_hugging_face_model_by_folder(tmp_path):
    """The by-name path, on a tiny BERT built from a config (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "sky", "is", "blue", "sea", "##s", "green"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)

    emb = Embedder.from_name(str(tmp_path))
    assert emb.table.shape == (len(words), 16)
    ids = emb.encode("The sky is blue, the seas green")
    assert emb.tokens(ids) == ["the", "sky", "is", "blue", "the", "sea", "##s", "green"]
    assert 1 not in ids  # [UNK] (the comma) is dropped
    assert emb.decode(ids) == "the sky is blue the seas green"
    assert not emb.support_mask[:5].any() and emb.support_mask[5:].all()
    assert emb.table[ids].shape == (len(ids), 16)
