"""Stage 5 building blocks: the chat format, padded batches, the losses and the KL estimator."""

import math

import pytest
import torch

from mini_llm import ops
from mini_llm.align.batches import IGNORE, Encoded, collate, collate_pairs, encode_turn, pad, read_jsonl
from mini_llm.align.chat import grow_vocabulary
from mini_llm.tokenizer.chat import ChatTokenizer, chat_template, parse_chat
from mini_llm.align.losses import (bradley_terry_loss, dpo_loss, kl_estimate, sequence_logps,
                                   sft_loss)
from mini_llm.tokenizer import CharTokenizer, tokenizer_from_dict
from mini_llm.errors import DataError
from mini_llm.generate import generate
from mini_llm.model import GPT, GPTConfig
from mini_llm.tokenizer import train_bpe

from conftest import CORPUS


def char_chat():
    return ChatTokenizer(CharTokenizer(sorted(set(CORPUS))))


def tiny_model(vocab_size, **kw):
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, **kw))


# --- the chat format -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_template_round_trips_through_both_tokenizers(kind):
    base = CharTokenizer(sorted(set(CORPUS))) if kind == "char" else train_bpe(CORPUS, 300)
    tok = ChatTokenizer(base)
    prompt, response = "First Citizen", "Speak, speak.\nResolved."
    text = chat_template(prompt, response)
    assert parse_chat(text) == (prompt, response)
    assert parse_chat(chat_template(prompt)) == (prompt, None)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # each marker is one id past the base vocabulary; a prompt encodes alone as in the turn
    assert sum(i >= base.vocab_size for i in ids) == 4 and ids[-1] == tok.end_id
    assert ids[: len(tok.encode(chat_template(prompt)))] == tok.encode(chat_template(prompt))
    assert tokenizer_from_dict(tok.to_dict()).encode(text) == ids  # as a checkpoint rebuilds it


def test_new_vocabulary_rows_are_the_mean_and_old_logits_are_kept():
    model = tiny_model(20)
    idx = torch.randint(0, 20, (2, 7))
    before = model(idx)[0]
    mean = model.wte.weight.mean(0)
    grow_vocabulary(model, 23)
    after = model(idx)[0]
    assert after.shape == (2, 7, 23) and model.config.vocab_size == 23
    torch.testing.assert_close(after[..., :20], before)
    torch.testing.assert_close(model.wte.weight[20:], mean.expand(3, -1))
    untied = tiny_model(20, tie_weights=False)
    grow_vocabulary(untied, 22)
    assert untied.lm_head.weight.shape == (22, 16) and untied(idx)[0].shape == (2, 7, 22)


def test_generation_stops_each_row_at_its_stop_token():
    torch.manual_seed(0)
    model = tiny_model(5).eval()
    prompt = torch.zeros(8, 3, dtype=torch.long)
    out = generate(model, prompt, 30, temperature=1.0, stop_token=4, generator=torch.Generator().manual_seed(1))
    new = out[:, 3:]
    for row in new.tolist():
        if 4 in row:  # after its first stop, a row holds only the stop token
            assert set(row[row.index(4):]) == {4}
    free = generate(model, prompt, 30, generator=torch.Generator().manual_seed(1))
    if out.size(1) < free.size(1):  # it ended early: then every row had stopped
        assert (new == 4).any(dim=1).all()
    # until a row stops, it is the same sample as without a stop token
    first_stop = [row.index(4) if 4 in row else len(row) for row in new.tolist()]
    for r, n in enumerate(first_stop):
        assert new[r, :n].tolist() == free[r, 3:3 + n].tolist()


# --- batches of variable length ---------------------------------------------------------------
@pytest.mark.parametrize("kernels", ["torch", "reference"])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_a_padded_batch_gives_each_sequence_its_logits_alone(kernels, pos):
    model = tiny_model(11, pos=pos).eval()
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [3, 1, 4, 1, 5]]
    ids, lengths = pad(seqs, pad_id=10)
    with ops.use_kernels(kernels), torch.no_grad():
        batched = model(ids)[0]
        for row, s in enumerate(seqs):
            alone = model(torch.tensor([s]))[0][0]
            torch.testing.assert_close(batched[row, : lengths[row]], alone, rtol=1e-5, atol=1e-5)


def test_the_sft_loss_reads_the_response_only():
    tok = char_chat()
    examples = [encode_turn(tok, "All", "Speak.", 32, "t:1"), encode_turn(tok, "First Citizen", "Resolved.", 32, "t:2")]
    batch = collate(examples)
    model = tiny_model(tok.vocab_size)
    logits = model(batch.ids)[0].detach().requires_grad_(True)
    sft_loss(logits, batch.labels).backward()
    touched = logits.grad.abs().sum(-1) > 0  # (B, T): positions the loss reads
    for row, e in enumerate(examples):
        expected = torch.zeros(batch.ids.size(1), dtype=torch.bool)
        expected[len(e.prompt) - 1 : len(e.ids) - 1] = True  # the positions predicting the response
        assert touched[row].tolist() == expected.tolist()
        assert batch.labels[row][expected].tolist() == e.response and e.response[-1] == tok.end_id
    # and it is the mean cross-entropy over exactly those tokens
    keep = batch.labels != IGNORE
    manual = -torch.log_softmax(logits, -1)[keep].gather(1, batch.labels[keep][:, None]).mean()
    torch.testing.assert_close(sft_loss(logits, batch.labels), manual)


def test_bad_examples_are_refused_with_where_they_are(tmp_path):
    tok = char_chat()
    with pytest.raises(DataError, match="f.jsonl:3: the response is empty"):
        encode_turn(tok, "All", "  ", 32, "f.jsonl:3")
    with pytest.raises(DataError, match="x:1: the prompt takes .* more than the context of 16"):
        encode_turn(tok, "First Citizen, First Citizen", "Speak.", 16, "x:1")
    cut = encode_turn(tok, "First Citizen, First Citizen", "Speak. Speak. Speak.", 16, "x:1", truncate=True)
    assert len(cut.ids) == 16 and cut.response[0] == tok.encode("S")[0]
    path = tmp_path / "f.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match=r"f.jsonl:3: not valid JSON"):
        read_jsonl(path, ("prompt", "response"))
    path.write_text('{"prompt": "a", "response": "b"}\n')
    assert read_jsonl(path, ("prompt", "response")) == [(f"{path}:1", {"prompt": "a", "response": "b"})]
    path.write_text('{"prompt": "a", "response": 3}\n')
    with pytest.raises(DataError, match=r"f.jsonl:1: needs a string 'response'"):
        read_jsonl(path, ("prompt", "response"))


# --- losses ------------------------------------------------------------------------------------
def test_sequence_logps_sum_the_labelled_tokens():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE, 2, 3, IGNORE], [1, IGNORE, IGNORE, IGNORE]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 2] + logp[0, 2, 3], logp[1, 0, 1]])
    torch.testing.assert_close(sequence_logps(logits, labels), expected)


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference_and_matches_by_hand():
    c, r = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -4.0])
    loss, metrics = dpo_loss(c, r, c, r, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["rewards/margins"].item() == 0
    # policy log-probs moved by +1/-1 (pair 1) and -2/+1 (pair 2) from the reference
    pc, pr = c + torch.tensor([1.0, -2.0]), r + torch.tensor([-1.0, 1.0])
    loss, metrics = dpo_loss(pc, pr, c, r, beta=0.5)
    by_hand = (math.log(1 + math.exp(-0.5 * 2)) + math.log(1 + math.exp(-0.5 * -3))) / 2
    assert loss.item() == pytest.approx(by_hand)
    assert metrics["rewards/chosen"].item() == pytest.approx((0.5 - 1.0) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx((-0.5 + 0.5) / 2)
    assert metrics["rewards/accuracies"].item() == 0.5
    assert metrics["logps/chosen"].item() == pytest.approx(pc.mean().item())
    smoothed, _ = dpo_loss(pc, pr, c, r, beta=0.5, label_smoothing=0.2)
    flipped, _ = dpo_loss(pr, pc, r, c, beta=0.5)
    assert smoothed.item() == pytest.approx(0.8 * by_hand + 0.2 * flipped.item())
    ipo, _ = dpo_loss(pc, pr, c, r, beta=0.5, loss_type="ipo")
    assert ipo.item() == pytest.approx(((2 - 1) ** 2 + (-3 - 1) ** 2) / 2)


def test_bradley_terry_loss_and_its_gradient():
    chosen = torch.tensor([2.0, 0.0, -1.0], requires_grad=True)
    rejected = torch.tensor([1.0, 0.5, 1.0], requires_grad=True)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    margins = torch.tensor([1.0, -0.5, -2.0])
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(-margins)).mean().item())
    loss.backward()
    # d/dr_c of -log sigmoid(m) / B = -(1 - sigmoid(m)) / B; the rejected reward gets the opposite
    torch.testing.assert_close(chosen.grad, -(1 - torch.sigmoid(margins)) / 3)
    torch.testing.assert_close(rejected.grad, -chosen.grad)
    assert metrics["rewards/accuracies"].item() == pytest.approx(1 / 3)
    centered, _ = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01)
    assert centered.item() == pytest.approx(loss.item() + 0.01 * (9 + 0.25 + 0) / 3)


def test_the_kl_estimator_finds_a_known_kl():
    # two categorical distributions; samples from p, KL(p || q) known exactly
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    kl, stderr = kl_estimate(p.log()[samples], q.log()[samples])
    assert 0 < stderr < 0.01 and abs(kl - exact) < 4 * stderr
    # sequences: independent tokens add their KL
    seq = torch.multinomial(p, 3 * 20000, replacement=True, generator=torch.Generator().manual_seed(1)).view(-1, 3)
    kl, stderr = kl_estimate(p.log()[seq].sum(1), q.log()[seq].sum(1))
    assert abs(kl - 3 * exact) < 4 * stderr


def test_the_reward_model_reads_the_last_real_token_and_learns_a_preference():
    from mini_llm.align.reward import RewardModel

    torch.manual_seed(0)
    rm = RewardModel(tiny_model(6))
    # chosen responses end in token 4, rejected in token 5, after prompts of varied length
    pairs = [(Encoded([1] * n, [2, 3, 4]), Encoded([1] * n, [2, 3, 5])) for n in (1, 3, 6)]
    batch = collate_pairs(pairs)
    scores = rm(batch.ids, batch.lengths)
    padded = batch.ids.clone()
    padded[batch.ids == 0] = 3  # other padding values: the same rewards
    torch.testing.assert_close(rm(padded, batch.lengths), scores)
    optimizer = torch.optim.AdamW(rm.parameters(), lr=1e-2)
    for _ in range(30):
        loss, metrics = bradley_terry_loss(*rm(batch.ids, batch.lengths).chunk(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 and metrics["rewards/accuracies"].item() == 1.0
