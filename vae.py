"""A variational autoencoder for MNIST, its loss (the negative ELBO), and the
importance-weighted bound on log p(x) that grades it in nats.

The class is the specification's: same constructor, attribute names, state_dict keys
and forward outputs. The functions below use only those attributes, so a student's own
copy of the class works with them too. This file imports only torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """Encoder q(z|x) = N(mu, diag(exp(logvar))), prior p(z) = N(0, I), decoder p(x|z).

    forward(x) takes images (B, 1, 28, 28) or (B, 784) with pixels in [0, 1] and returns
    (x_prime, mu, logvar): a decoded sample z ~ q(z|x), (B, input_size), and q's
    parameters, (B, z_dims) each.
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

        # log(sigma^2) rather than sigma: any real number is a valid log-variance, so the
        # variance stays positive without a constraint.
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

    def forward(self, x):
        mu, logvar = encode(self, x)
        return self.decoder(reparameterize(mu, logvar)), mu, logvar

    def encode(self, x):
        """(mu, logvar) of q(z|x)."""
        return encode(self, x)

    def decode(self, z):
        """Pixel intensities in [0, 1], the mean of p(x|z), for codes z of shape (B, z_dims)."""
        return self.decoder(z)


def encode(model, x):
    """The parameters (mu, logvar) of q(z|x), from any model with the specification's
    encoder, mu and logvar layers, for images (B, 1, 28, 28) or (B, 784)."""
    h = model.encoder(x.flatten(start_dim=1))
    return model.mu(h), model.logvar(h)


def reparameterize(mu, logvar, generator=None):
    """z ~ N(mu, exp(logvar)) as mu + sigma * eps, eps ~ N(0, I): gradients reach mu and
    logvar through the sample (the reparameterisation trick). eps comes from generator
    when one is given, else from torch's global random state."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
    return mu + std * eps


def kl_divergence(mu, logvar):
    """The ELBO's regulariser KL(q(z|x) || N(0, I)), in closed form for diagonal
    Gaussians, summed over latent dimensions and the batch."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def check_kind(kind):
    if kind not in ("mse", "bce"):
        raise ValueError(f'kind must be "mse" or "bce", not {kind!r}')


def reconstruction_loss(x_prime, x, kind="mse"):
    """The ELBO's reconstruction term -E_q[log p(x|z)] from one sample of z, summed over
    pixels and the batch: "mse" is the squared error, a Gaussian decoder less a constant
    (the specification's choice); "bce" the cross-entropy of a Bernoulli decoder."""
    check_kind(kind)
    loss = F.mse_loss if kind == "mse" else F.binary_cross_entropy
    return loss(x_prime.flatten(start_dim=1), x.flatten(start_dim=1), reduction="sum")


def negative_elbo(x_prime, x, mu, logvar, beta=1.0, recon="mse"):
    """The loss to minimise, reconstruction + beta * KL, summed over the batch: beta = 1
    is the true negative ELBO, beta = 0 a plain autoencoder."""
    return reconstruction_loss(x_prime, x, recon) + beta * kl_divergence(mu, logvar)


def log_likelihood_constant(kind="mse", pixels=784):
    """What reconstruction_loss leaves out of -log p(x|z) per image, in nats:
    (pixels / 2) ln(pi) = 448.73 for "mse" on MNIST, 0 for "bce"."""
    check_kind(kind)
    return 0.5 * pixels * math.log(math.pi) if kind == "mse" else 0.0


def log_likelihood(x_prime, x, kind="mse"):
    """log p(x|z) per image in nats, the decoder's whole density at images x given its
    outputs x_prime (..., B, pixels), summed over the pixels. "mse": a Gaussian of
    variance 1/2 per pixel; "bce": a Bernoulli per pixel, exact for pixels that are 0
    or 1, its logs clamped at -100 as binary_cross_entropy's are."""
    check_kind(kind)
    x = x.flatten(start_dim=1)
    if kind == "mse":
        return -(x_prime - x).pow(2).sum(-1) - log_likelihood_constant("mse", x.shape[1])
    log_p, log_not_p = x_prime.log().clamp(min=-100), (-x_prime).log1p().clamp(min=-100)
    return (x * log_p + (1 - x) * log_not_p).sum(-1)


@torch.no_grad()
def iwae_bound(model, x, k=1, recon="mse", generator=None):
    """Burda et al.'s (2015, eq. 8) k-sample bound L_k on log p(x) per image, in nats,
    shape (B,): L_k = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x).

    Averaged over draws, L_1 is the ELBO; the average of L_k never falls as k grows, and tends to
    log p(x) when the weights are bounded (Burda et al., Theorem 1). Codes are decoded about 1024
    at a time, so memory does not grow with k.
    """
    check_kind(recon)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = x.flatten(start_dim=1)
    mu, logvar = encode(model, x)
    std = torch.exp(0.5 * logvar)
    chunk = max(1, 1024 // len(x))
    # Filled in place: small tensors kept in a list between each chunk's large
    # temporaries fragment the heap, which then grows by gigabytes.
    log_weights = torch.empty(k, len(x), dtype=mu.dtype, device=mu.device)
    for start in range(0, k, chunk):
        shape = (min(chunk, k - start), *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + std * eps
        decoded = model.decoder(z.flatten(end_dim=1)).reshape(len(z), len(x), -1)
        # log p(z) - log q(z|x) for the two diagonal Gaussians; their ln(2 pi) terms cancel.
        log_prior_over_posterior = 0.5 * (eps.pow(2) + logvar - z.pow(2)).sum(-1)
        log_weights[start : start + len(z)] = (
            log_likelihood(decoded, x, recon) + log_prior_over_posterior
        )
    return torch.logsumexp(log_weights, 0) - math.log(k)
