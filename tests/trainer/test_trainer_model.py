"""The model, the loss and the tokenizer, checked against first principles."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from trainer.loss import clip_loss
from trainer.model import CLIP, MODEL_SIZES, model_config
from trainer.tokenizer import CaptionTokenizer, train_bpe
from trainer.train import lr_factor, param_groups

torch.set_num_threads(1)  # 2 threads on 2 busy shared cores spin-wait badly


def naive_loss(image_features, text_features, scale):
    """The paper's pseudo-code, one row at a time, in Python floats."""
    n = len(image_features)
    sim = [[scale * float(image_features[i] @ text_features[j]) for j in range(n)] for i in range(n)]

    def cross_entropy(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / n

    columns = [[sim[i][j] for i in range(n)] for j in range(n)]
    return (cross_entropy(sim) + cross_entropy(columns)) / 2


def features(n, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(a + 0.7 * torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    return a, b


def test_loss_equals_naive_loop():
    a, b = features(9)
    loss, accuracy = clip_loss(a, b, torch.tensor(7.5, dtype=torch.float64))
    assert loss.item() == pytest.approx(naive_loss(a, b, 7.5), rel=1e-10)
    assert 0 <= accuracy.item() <= 1


def test_loss_is_log_n_at_zero_scale():
    a, b = features(13)
    loss, _ = clip_loss(a, b, torch.tensor(0.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(13), rel=1e-12)


def test_loss_is_invariant_to_permuting_the_batch():
    a, b = features(11, seed=3)
    scale = torch.tensor(20.0, dtype=torch.float64)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    assert clip_loss(a[perm], b[perm], scale)[0].item() == pytest.approx(clip_loss(a, b, scale)[0].item(), rel=1e-12)
    # permuting only one side breaks the pairs, and the loss sees it
    assert clip_loss(a, b[perm], scale)[0].item() > clip_loss(a, b, scale)[0].item() + 1


@pytest.mark.parametrize("size", ["tiny", "tiny-rn"])
def test_towers_give_normalised_features_and_cut_padding_changes_nothing(size):
    torch.manual_seed(0)
    cfg = model_config(size, vocab_size=300, eot_id=2, image_size=64)
    model = CLIP(cfg).eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = torch.zeros(3, 77, dtype=torch.long)
    for i, length in enumerate((5, 9, 3)):
        tokens[i, :length] = torch.randint(3, 300, (length,))
        tokens[i, length] = 2
    with torch.no_grad():
        img, txt, scale = model(images, tokens)
        txt_cut = model.encode_text(tokens[:, :10])  # the longest caption ends at index 9
    assert img.shape == txt.shape == (3, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert torch.allclose(txt, txt_cut, atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    # text after the EOT token does not reach the feature (causal mask, pooled at EOT)
    tokens2 = tokens.clone()
    tokens2[0, 7:] = 17
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens2)[0], txt[0], atol=1e-5)


def test_logit_scale_is_clamped_at_100():
    model = CLIP(model_config("tiny", vocab_size=300, eot_id=2))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100, rel=1e-5)


def test_paper_sizes_have_the_papers_parameter_counts():
    with torch.device("meta"):
        counts = {n: CLIP(MODEL_SIZES[n]).num_params() / 1e6 for n in ("vit-b-32", "rn50")}
    assert counts["vit-b-32"] == pytest.approx(151.3, abs=0.1)  # CLIP ViT-B/32
    assert counts["rn50"] == pytest.approx(102.0, abs=0.1)  # CLIP RN50


def test_no_weight_decay_on_gains_biases_and_logit_scale():
    model = CLIP(model_config("tiny", vocab_size=300, eot_id=2))
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names
    assert all(n.endswith(("bias", "weight")) and ("ln" in n or n.endswith("bias")) or n in
               ("logit_scale", "visual.class_embedding") for n in no_decay_names)
    assert "text.token_embedding.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(factors[10:], factors[11:]))
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_tokenizer_pads_to_77_and_always_ends_with_eot():
    tok = train_bpe(["a red circle", "a blue square on grey"] * 20, vocab_size=400)
    out = tok(["a red circle", "red " * 200])
    assert out.shape == (2, 77)
    assert out[0, 0] == tok.start_id and (out[0] == tok.end_id).sum() == 1
    assert out[1, 76] == tok.end_id  # cut to fit, EOT kept
    assert tok.tokenizer.decode(out[0].tolist()).strip() == "a red circle"


def test_an_existing_clip_style_tokenizer_json_is_understood(tmp_path):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "b": 3}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    clip_tok = CaptionTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (clip_tok.start_id, clip_tok.end_id) == (0, 1)
    assert clip_tok(["a b a"])[0, :5].tolist() == [0, 2, 3, 2, 1]


@pytest.mark.slow
def test_tiny_model_overfits_64_pairs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=g)
    tokens = torch.randint(3, 300, (64, 8), generator=g)
    tokens[:, -1] = 2
    model = CLIP(model_config("tiny", vocab_size=300, eot_id=2, image_size=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    first = None
    for _ in range(30):
        loss, accuracy = clip_loss(*model(images, tokens))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
    assert first > 3.5  # about ln 64
    assert loss.item() < 0.05 and accuracy.item() == 1.0
