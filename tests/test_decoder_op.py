"""specdec/csrc/decoder.cpp's attention, against its definition: a float32 reference in torch that performs the same
operations in the same order, one rounding at a time, so the two must agree bit for bit. A rearranged loop that
changed one sum's order (and with it a verify's bits, or a row's dependence on the rows beside it) fails here."""
import pytest
import torch

from specdec import qkernel


def exp_approx(x):
    """ops.h's exp_approx, one float32 operation at a time."""
    f = lambda v: torch.tensor(v, dtype=torch.float32)
    x = x.clamp(-87.0, 88.0)
    shifter = f(12582912.0)
    n = (x * f(1.44269504088896341) + shifter) - shifter
    r = x - n * f(0.693359375)
    r = r - n * f(-2.12194440e-4)
    p = torch.full_like(x, 1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f(c)
    p = (p * (r * r) + r) + f(1.0)
    scale = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return p * scale


def attend_row(q, keys, values, scale):
    """One query row over keys [n, D]: 16 lanes per dot product summed in order of d, the lanes added 0..15, then
    e^(score - max) summed in order of keys, each output's weighted sum in order of keys from 0, times 1 / sum."""
    n, D = keys.shape
    products = q * keys
    lanes = torch.zeros(n, 16)
    for d in range(0, D, 16):
        lanes = lanes + products[:, d:d + 16]
    s = torch.zeros(n)
    for lane in range(16):
        s = s + lanes[:, lane]
    scores = s * torch.tensor(scale, dtype=torch.float32)
    e = exp_approx(scores - scores.max())
    total, out = torch.zeros(()), torch.zeros(D)
    for j in range(n):
        total = total + e[j]
    for j in range(n):
        out = out + e[j] * values[j]
    return out * (torch.ones(()) / total)


@pytest.mark.parametrize("D", [16, 64, 80, 128])
def test_attention_computes_its_definition_bit_for_bit(D):
    """Grouped-query heads (2 query heads a kv head), rows of a batch at different positions (1 to 23 keys), head
    sizes from one 16-lane block to eight (80: five)."""
    assert qkernel.load(), qkernel.why_not()
    g = torch.Generator().manual_seed(D)
    B, H, Hkv, T, capacity = 2, 4, 2, 3, 24
    q = torch.randn(B, H, T, D, generator=g)
    keys, values = torch.randn(B, Hkv, capacity, D, generator=g), torch.randn(B, Hkv, capacity, D, generator=g)
    positions = torch.tensor([[0, 5, 6], [17, 21, 22]])
    scale = D ** -0.5
    out = torch.ops.specdec.attend(q, keys, values, positions, scale).view(B, T, H, D)
    for b in range(B):
        for t in range(T):
            n = int(positions[b, t]) + 1
            for h in range(H):
                kv = h // (H // Hkv)
                ref = attend_row(q[b, h, t], keys[b, kv, :n], values[b, kv, :n], scale)
                assert torch.equal(out[b, t, h], ref), (b, t, h)


def test_attention_refuses_a_position_outside_the_arena():
    assert qkernel.load(), qkernel.why_not()
    q, kv = torch.randn(1, 2, 1, 16), torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="outside the arena"):
        torch.ops.specdec.attend(q, kv, kv, torch.tensor([[4]]), 0.25)
