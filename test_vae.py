"""Behaviour tests: offline, on the CPU, in well under a minute.

Each test names the bug it is there to catch.

    python -m pytest -q
"""
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

from vae import VAE, kl_divergence, negative_elbo, reconstruction_loss


class SpecVAE(nn.Module):
    """The specification's class (section 4) as written: the reference for the API."""

    def __init__(self, z_dims=4, input_size=784, num_hidden=128):
        super().__init__()
        self.z_dims = z_dims
        self.input_size = input_size
        self.encoder = nn.Sequential(nn.Linear(input_size, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, num_hidden), nn.ReLU())
        self.mu = nn.Linear(num_hidden, z_dims)
        self.logvar = nn.Linear(num_hidden, z_dims)
        self.decoder = nn.Sequential(nn.Linear(z_dims, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, input_size), nn.Sigmoid())

    def forward(self, x):
        x = x.flatten(start_dim=1)
        x = self.encoder(x)
        mu = self.mu(x)
        logvar = self.logvar(x)
        std = torch.exp(0.5 * logvar)
        epsilon = torch.randn_like(std)
        z = mu + std * epsilon
        output = self.decoder(z)
        return output, mu, logvar


# ---------------------------------------------------------------- vae.py

@pytest.mark.parametrize("layout", [(5, 1, 28, 28), (5, 784)])
def test_forward_shapes_for_both_input_layouts(layout):
    # Catches: a forward that does not flatten images, or returns the wrong things.
    x_prime, mu, logvar = VAE()(torch.rand(layout))
    assert x_prime.shape == (5, 784) and mu.shape == (5, 4) and logvar.shape == (5, 4)
    x_prime, mu, logvar = VAE(z_dims=3, num_hidden=16)(torch.rand(layout))
    assert x_prime.shape == (5, 784) and mu.shape == logvar.shape == (5, 3)


def test_outputs_are_pixel_intensities():
    # Catches: a missing sigmoid (a linear readout gives values outside [0, 1]).
    torch.manual_seed(0)
    model = VAE()
    with torch.no_grad():
        model.decoder[-2].weight.mul_(50)
    x_prime, _, _ = model(torch.rand(64, 784))
    assert x_prime.min() >= 0 and x_prime.max() <= 1
    assert x_prime.min() < 0.01 and x_prime.max() > 0.99


def test_state_dict_is_the_specifications():
    # Catches: renamed or restructured layers, which would break coursework checkpoints.
    ours, spec = VAE().state_dict(), SpecVAE().state_dict()
    assert list(ours) == list(spec)
    assert all(ours[k].shape == spec[k].shape for k in ours)
    VAE().load_state_dict(spec)
    SpecVAE().load_state_dict(ours)
    model = VAE(z_dims=6, input_size=100, num_hidden=32)
    assert (model.z_dims, model.input_size) == (6, 100)


def test_forward_matches_the_specifications_for_the_same_rng():
    # Catches: any change to the sampling (order of draws, std from logvar, what is decoded).
    spec = SpecVAE()
    ours = VAE()
    ours.load_state_dict(spec.state_dict())
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(3)
    expected = spec(x)
    torch.manual_seed(3)
    for a, b in zip(ours(x), expected):
        assert torch.equal(a, b)


def test_kl_is_zero_at_the_prior():
    # Catches: constant offsets in the KL (a missing "1 +", a stray log term).
    zeros = torch.zeros(7, 4)
    assert kl_divergence(zeros, zeros).item() == 0.0


def test_kl_matches_torch_distributions():
    # Catches: a wrong sign, logvar used as a standard deviation, a mean instead of a sum.
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 4), torch.randn(16, 4)
    expected = torch.distributions.kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum()
    assert torch.allclose(kl_divergence(mu, logvar), expected, rtol=1e-5)
    assert kl_divergence(mu, logvar) > 0


def test_reparameterize_draws_with_variance_exp_logvar():
    # Catches: no sampling (variance 0), logvar used as std (variance logvar^2),
    # exp(logvar) used as std (variance exp(2 logvar)).
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0]).expand(200_000, 2)
    logvar = torch.tensor([np.log(4.0), np.log(0.25)]).float().expand(200_000, 2)
    z = VAE(z_dims=2).reparameterize(mu, logvar)
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.02)
    assert torch.allclose(z.var(0), torch.tensor([4.0, 0.25]), rtol=0.02)


def test_forward_samples_in_train_mode():
    # Catches: a forward that decodes mu instead of a sample z.
    torch.manual_seed(0)
    model = VAE().train()
    x = torch.rand(4, 784)
    first, mu1, _ = model(x)
    second, mu2, _ = model(x)
    assert torch.equal(mu1, mu2)
    assert not torch.allclose(first, second)


def test_negative_elbo_is_squared_error_sum_plus_kl():
    # Catches: a mean instead of a sum, a missing or misweighted KL, BCE mixed up with MSE.
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    x_prime, mu, logvar = VAE()(x)
    flat = x.flatten(start_dim=1)
    kl = 0.5 * torch.sum(mu**2 + logvar.exp() - 1 - logvar)
    squared = ((x_prime - flat) ** 2).sum()
    bce = -(flat * x_prime.log() + (1 - flat) * (1 - x_prime).log()).sum()
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar), squared + kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, beta=0.25), squared + 0.25 * kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, recon="bce"), bce + kl)
    twice = [torch.cat([t, t]) for t in (x_prime, x, mu, logvar)]
    assert torch.allclose(negative_elbo(*twice), 2 * negative_elbo(x_prime, x, mu, logvar))
    with pytest.raises(ValueError, match="mse"):
        reconstruction_loss(x_prime, x, kind="l1")
