"""wscswap_fast.nn.AIN gives the numbers of a plain FaceShifter-style AAD block."""
import pytest
import torch
from torch import nn

from wscswap_fast.nn import AIN


class AADBlock(nn.Module):
    """FaceShifter's AAD layer, written plainly: instance norm, attribute and identity
    modulations, a sigmoid mask from a 1x1 conv of the normalised activation."""

    def __init__(self, channels, id_dim, att_channels):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.conv_gamma = nn.Conv2d(att_channels, channels, 1)
        self.conv_beta = nn.Conv2d(att_channels, channels, 1)
        self.fc_gamma = nn.Linear(id_dim, channels)
        self.fc_beta = nn.Linear(id_dim, channels)
        self.conv_mask = nn.Conv2d(channels, 1, 1)

    def forward(self, h, z_id, att):
        h_bar = self.norm(h)
        a = self.conv_gamma(att) * h_bar + self.conv_beta(att)
        i = self.fc_gamma(z_id)[..., None, None] * h_bar + self.fc_beta(z_id)[..., None, None]
        m = torch.sigmoid(self.conv_mask(h_bar))
        return (1 - m) * a + m * i, m


def _copy_params(aad: AADBlock, layer: AIN):
    pairs = [(aad.conv_gamma, layer.att_gamma), (aad.conv_beta, layer.att_beta), (aad.fc_gamma, layer.id_gamma),
             (aad.fc_beta, layer.id_beta), (aad.conv_mask, layer.mask)]
    with torch.no_grad():
        for src, dst in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_matches_faceshifter_aad_block(backend):
    torch.manual_seed(torch.seed() % 2**31)
    aad = AADBlock(16, 32, 8).double()
    layer = AIN(16, 32, 8).double()
    _copy_params(aad, layer)
    h = torch.randn(3, 16, 9, 7, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    att = torch.randn(3, 8, 9, 7, dtype=torch.float64, requires_grad=True)
    out, m = layer(h, z, att, return_mask=True, backend=backend)
    ref_out, ref_m = aad(h, z, att)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m, ref_m, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [h, z, att, *layer.parameters()], g)
    want = torch.autograd.grad(ref_out, [h, z, att, *aad.parameters()], g)
    # parameters are registered in the same order: gamma/beta convs, linears, mask conv
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_attribute_size_must_match():
    layer = AIN(4, 8, 2)
    with pytest.raises(ValueError, match="att must have h's spatial size"):
        layer(torch.randn(1, 4, 5, 5), torch.randn(1, 8), torch.randn(1, 2, 4, 4))
