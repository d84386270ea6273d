"""A variational autoencoder for MNIST and its loss, the negative ELBO.

The model is the specification's class exactly (same constructor, attribute names,
state_dict keys and forward outputs), so checkpoints move freely between the two.
This file imports only torch: paste it into a notebook as it is.
"""
import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """Encoder q(z|x) = N(mu, diag(exp(logvar))), prior p(z) = N(0, I), decoder p(x|z).

    forward(x) takes images as (B, 1, 28, 28) or (B, 784) with pixels in [0, 1] and
    returns (x_prime, mu, logvar): the decoded sample of shape (B, input_size), and
    the posterior's mean and log-variance, each (B, z_dims).
    """

    def __init__(self, z_dims=4, input_size=784, num_hidden=128):
        super().__init__()
        self.z_dims = z_dims
        self.input_size = input_size

        self.encoder = nn.Sequential(
            nn.Linear(input_size, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, num_hidden),
            nn.ReLU(),
        )

        # The encoder predicts log(sigma^2) rather than sigma: any real number is a
        # valid log-variance, so no constraint is needed to keep the variance positive.
        self.mu = nn.Linear(num_hidden, z_dims)
        self.logvar = nn.Linear(num_hidden, z_dims)

        # The sigmoid keeps every decoded pixel in [0, 1], like the data.
        self.decoder = nn.Sequential(
            nn.Linear(z_dims, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, input_size),
            nn.Sigmoid(),
        )

    def encode(self, x):
        """The parameters (mu, logvar) of q(z|x)."""
        h = self.encoder(x.flatten(start_dim=1))
        return self.mu(h), self.logvar(h)

    def reparameterize(self, mu, logvar, generator=None):
        """A sample z ~ N(mu, exp(logvar)) written as mu + sigma * eps with eps ~ N(0, I),
        so that gradients flow to mu and logvar through the sampling. eps comes from
        generator when one is given, else from torch's global random state."""
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
        return mu + std * eps

    def decode(self, z):
        """Pixel intensities in [0, 1] for latent codes z of shape (B, z_dims)."""
        return self.decoder(z)

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def kl_divergence(mu, logvar):
    """The ELBO's regulariser KL(q(z|x) || N(0, I)), in closed form for diagonal
    Gaussians, summed over latent dimensions and the batch."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def reconstruction_loss(x_prime, x, kind="mse"):
    """The ELBO's reconstruction term -E_q[log p(x|z)], up to a constant, from one
    sample of z, summed over pixels and the batch.

    "mse": squared error, a Gaussian likelihood (the specification's choice).
    "bce": binary cross-entropy, a Bernoulli likelihood per pixel.
    """
    x = x.flatten(start_dim=1)
    if kind == "mse":
        return F.mse_loss(x_prime, x, reduction="sum")
    if kind == "bce":
        return F.binary_cross_entropy(x_prime, x, reduction="sum")
    raise ValueError(f'kind must be "mse" or "bce", not {kind!r}')


def negative_elbo(x_prime, x, mu, logvar, beta=1.0, recon="mse"):
    """The loss to minimise: reconstruction + beta * KL, summed over the batch
    (divide by the number of images for a per-image figure). beta = 1 is the true
    negative ELBO; beta = 0 leaves a plain autoencoder."""
    return reconstruction_loss(x_prime, x, recon) + beta * kl_divergence(mu, logvar)
