"""Stage 5, part 2: rollouts, the RL objectives (GAE, clipped losses, KL penalty, group
advantages) and the rewards' bad samples, each checked against a hand computation."""

import math

import pytest
import torch

from mini_llm.align.rewards import Sample, score
from mini_llm.align.rl_losses import (clipped_policy_loss, clipped_value_loss, explained_variance, gae,
                                      group_advantages, grpo_loss, kl_penalty, masked_mean, masked_whiten)
from mini_llm.align.rollout import entropy, next_token_logprobs, rollout, token_logprobs
from mini_llm.errors import ConfigError, DataError
from mini_llm.model import GPT, GPTConfig


def tiny_policy(pos="learned", seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=12, block_size=24, n_layer=2, n_head=2, n_embd=16, pos=pos)).eval()


# --- rollouts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_rollout_logprobs_equal_a_full_forward(pos):
    policy = tiny_policy(pos)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1], [2, 2]]  # three lengths
    r = rollout(policy, prompts, k=3, max_new_tokens=8, stop_token=11, generator=torch.Generator().manual_seed(0))
    assert r.ids.shape[0] == 12 and r.mask.shape == r.logprobs.shape == (12, r.ids.size(1) - 1)
    for row in range(12):
        p = prompts[row // 3]
        assert r.ids[row, :len(p)].tolist() == p and r.prompt_lengths[row] == len(p)
        assert r.mask[row].sum() == len(r.answers[row]) and r.mask[row, len(p) - 1]  # the first answer token
        a = r.answers[row]
        assert (11 in a) == r.stopped[row] and (not r.stopped[row] or a.index(11) == len(a) - 1)  # stops on its own
    full = token_logprobs(policy(r.ids)[0], r.ids)
    torch.testing.assert_close(full * r.mask, r.logprobs, atol=2e-5, rtol=0)
    assert (r.logprobs[~r.mask] == 0).all()


def test_rollout_at_a_temperature_gives_that_distributions_logprobs():
    policy = tiny_policy()
    r = rollout(policy, [[1, 2]], k=4, max_new_tokens=6, stop_token=11, temperature=0.7,
                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(token_logprobs(policy(r.ids)[0], r.ids, 0.7) * r.mask, r.logprobs, atol=2e-5, rtol=0)


def test_rollout_refuses_an_empty_prompt_set_and_prompts_that_fill_the_context():
    policy = tiny_policy()
    with pytest.raises(ConfigError, match="empty"):
        rollout(policy, [], k=2, max_new_tokens=4, stop_token=11)
    with pytest.raises(DataError, match="prompt 1 has 24 tokens"):
        rollout(policy, [[1], [1] * 24], k=2, max_new_tokens=4, stop_token=11)
    r = rollout(policy, [[1] * 22], k=2, max_new_tokens=9, stop_token=11)  # capped at the context
    assert r.ids.size(1) <= 24


def test_entropy_of_the_next_token_distributions():
    logits = torch.zeros(1, 3, 8)
    logits[0, 1, 0] = 1e4  # position 1 is certain of token 0; position 2 is never read (no next token)
    ent = entropy(next_token_logprobs(logits))
    torch.testing.assert_close(ent, torch.tensor([[math.log(8), 0.0]]))


# --- the objectives ----------------------------------------------------------------------------
def test_masked_mean_and_whiten_ignore_what_is_masked():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.5]))
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0, abs=1e-6)
    assert masked_mean(w ** 2, mask).item() == pytest.approx(1, abs=1e-5)
    assert w[0, 2] == 0 and w[1, 1] == 0


def test_gae_matches_a_hand_computation():
    # one answer of 3 tokens after a 1-token prompt (label positions 0..3, the answer at 1..3)
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3]])  # position 0 is the prompt: ignored
    mask = torch.tensor([[False, True, True, True]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 - 0.3  # the last token: nothing after it
    d2 = -0.2 + gamma * 0.3 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1 + gamma * lam * a2
    adv, ret = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[0.0, a1, a2, a3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3]]))
    # lam = 1, gamma = 1: the advantage is the sum of the rewards to go minus the value
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3]]))


def test_the_clipped_policy_loss_takes_the_pessimistic_term():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))  # ratios
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, m = clipped_policy_loss(logp, old, adv, mask, clip=0.2)
    # ratio 1.5 with A > 0 is clipped to 1.2; 0.5 with A < 0 to 0.8; 1.1 is inside the range
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -1.2, 0.8, 1.1]]))
    assert m["clip_ratio"].item() == pytest.approx(0.5)


def test_ppo_ratio_is_one_on_the_first_on_policy_step():
    policy = tiny_policy()
    r = rollout(policy, [[1, 2, 3], [4]], k=2, max_new_tokens=6, stop_token=11, generator=torch.Generator().manual_seed(3))
    logp = token_logprobs(policy.train()(r.ids)[0], r.ids)  # the training forward, dropout 0
    _, m = clipped_policy_loss(logp, r.logprobs, torch.randn(r.mask.shape), r.mask, clip=0.2)
    assert m["ratio"].item() == pytest.approx(1.0, abs=1e-5)
    assert m["clip_ratio"].item() == 0 and m["approx_kl"].item() == pytest.approx(0, abs=1e-9)


def test_the_clipped_value_loss_and_explained_variance():
    old, ret = torch.zeros(1, 3), torch.ones(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # V = 0.1 is inside the clip range of 0.2 around the old 0: (V - R)^2 = 0.81. V = 0.5 moved
    # past it toward R: its clipped value 0.2 is further from R, and the larger error, 0.64,
    # counts. V = 2 overshot: its own error, 1, is the larger.
    loss, _ = clipped_value_loss(torch.tensor([[0.1, 0.5, 2.0]]), old, ret, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 1.0) / 3)
    r = torch.tensor([[1.0, 2.0, 3.0]])
    m3 = torch.ones(1, 3, dtype=torch.bool)
    assert explained_variance(r, r, m3).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), r, m3).item() == pytest.approx(0.0)


def test_the_kl_penalty_has_the_right_sign():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))  # log pi - log pi_ref
    k3 = kl_penalty(logp, ref, "k3")
    assert (k3 >= 0).all() and k3[0].item() == pytest.approx(math.exp(-1) + 1 - 1)
    # both estimate KL(pi || ref): on samples from pi, their means approach the exact KL
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    draws = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    exact = (p * (p / q).log()).sum().item()
    for kind in ("k1", "k3"):
        assert kl_penalty(p.log()[draws], q.log()[draws], kind).mean().item() == pytest.approx(exact, abs=5e-3)
    with pytest.raises(ConfigError):
        kl_penalty(logp, ref, "k2x")


def test_group_advantages_normalise_within_each_prompt():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # 2 prompts x 4 answers
    adv, zero_std = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    torch.testing.assert_close(adv[:4], (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-4))
    assert (adv[4:] == 0).all() and zero_std.item() == 0.5
    raw, _ = group_advantages(rewards, 4, scale=False)  # Dr. GRPO: centred only
    torch.testing.assert_close(raw[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ConfigError, match="at least 2"):
        group_advantages(rewards, 1)


def test_a_skipped_answer_counts_in_neither_its_groups_mean_nor_std():
    adv, _ = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 2.0]), 4, scale=False)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -1.0, 1.0]))


def test_grpo_normalisations():
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    seq, _ = grpo_loss(old, old, None, adv, mask, norm="sequence")  # ratio 1: per token -A
    assert seq.item() == pytest.approx((-1 + 1) / 2)
    tok, _ = grpo_loss(old, old, None, adv, mask, norm="token")
    assert tok.item() == pytest.approx((-1 + 3) / 4)
    dr, _ = grpo_loss(old, old, None, adv, mask, norm="dr_grpo", max_tokens=4)
    assert dr.item() == pytest.approx((-1 + 3) / (2 * 4))
    with_kl, m = grpo_loss(old, old, old - 1.0, adv, mask, beta=0.5, norm="token")
    assert m["kl"].item() == pytest.approx(math.exp(-1) + 1 - 1)  # r = pi_ref / pi = e^-1
    assert with_kl.item() == pytest.approx(tok.item() + 0.5 * m["kl"].item())


# --- rewards -----------------------------------------------------------------------------------
def test_a_reward_that_raises_or_gives_nan_skips_that_answer_with_a_warning(capsys):
    def reward(sample):
        if sample.text == "boom":
            raise RuntimeError("no")
        return float("nan") if sample.text == "nan" else len(sample.text)

    values = score(reward, [Sample("p", t, []) for t in ("ab", "boom", "nan", "abc")])
    assert values[0] == 2 and values[3] == 3 and values[1:3].isnan().all()
    assert "failed on 2 of 4 answers" in capsys.readouterr().err
    with pytest.raises(DataError, match="every one of 2"):
        score(reward, [Sample("p", "boom", []), Sample("p", "nan", [])])


# --- best-of-n ---------------------------------------------------------------------------------
def test_best_of_n_expectation_equals_enumerating_every_subset():
    from itertools import combinations

    from mini_llm.align.best_of_n import analytic_kl, expected_best

    g = torch.Generator().manual_seed(0)
    selector, value = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    for n in (1, 2, 3, 6):
        for p in range(2):
            subsets = list(combinations(range(6), n))
            exact = sum(value[p, max(s, key=lambda i: selector[p, i])].item() for s in subsets) / len(subsets)
            assert expected_best(selector, value, n)[p].item() == pytest.approx(exact, abs=1e-6)
    torch.testing.assert_close(expected_best(selector, value, 1), value.double().mean(1))  # n = 1: any answer
    assert analytic_kl(1) == 0 and analytic_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ConfigError):
        expected_best(selector, value, 7)
