import pytest
import torch
import torch.nn.functional as F

from rlhf_trainer.trainer.linear_cross_entropy import default_chunk_size, linear_cross_entropy


def problem(seed: int, tokens: int = 150, hidden: int = 24, vocab: int = 500, bias: bool = False):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=generator, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).requires_grad_()
    b = torch.randn(vocab, generator=generator).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[torch.rand(tokens, generator=generator) < 0.3] = -100  # ignored tokens among the rest
    return h, w, b, targets


def loss_and_grads(loss_fn, h, w, b, targets):
    params = [p for p in (h, w, b) if p is not None]
    loss = loss_fn(h, w, b, targets)
    return loss.detach(), torch.autograd.grad(loss * 0.5, params)  # a non-unit upstream gradient


def plain(h, w, b, targets):
    return F.cross_entropy(F.linear(h, w, b), targets, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize(("seed", "chunk_size", "bias"), [(0, 7, False), (1, 64, True), (2, 1000, False)])
def test_chunked_loss_and_gradients_equal_cross_entropy_of_the_full_logits(seed, chunk_size, bias):
    h, w, b, targets = problem(seed, bias=bias)
    expected_loss, expected_grads = loss_and_grads(plain, h, w, b, targets)

    def chunked(h, w, b, t):
        return linear_cross_entropy(h, w, t, b, chunk_size=chunk_size)

    loss, grads = loss_and_grads(chunked, h, w, b, targets)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_the_plain_bf16_path():
    h, w, _, targets = problem(3, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss, expected_grads = loss_and_grads(plain, h, w, None, targets)
        loss, grads = loss_and_grads(
            lambda h, w, b, t: linear_cross_entropy(h, w, t, chunk_size=32), h, w, None, targets)
    assert grads[0].dtype == grads[1].dtype == torch.float32  # gradients in the parameters' dtype
    torch.testing.assert_close(loss, expected_loss, rtol=1e-3, atol=1e-2)
    for got, expected in zip(grads, expected_grads, strict=True):
        assert (got - expected).norm() / expected.norm() < 1e-2


def test_all_tokens_ignored_gives_zero_loss_and_zero_gradients():
    h, w, _, targets = problem(4)
    loss = linear_cross_entropy(h, w, torch.full_like(targets, -100))
    loss.backward()
    assert loss.item() == 0.0 and not h.grad.any() and not w.grad.any()


def test_without_grad_mode_no_gradient_is_computed_or_kept():
    h, w, _, targets = problem(5)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, targets)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, plain(h, w, None, targets).detach())


def test_chunks_hold_a_bounded_number_of_logits_for_large_vocabularies():
    assert default_chunk_size(151936) * 151936 <= 64 * 2**20
    assert default_chunk_size(151936) % 64 == 0 and default_chunk_size(10**9) == 64
