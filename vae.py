"""A variational autoencoder for MNIST, its loss (the negative ELBO), and the
importance-weighted bound on log p(x) that grades it in nats.

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


def log_likelihood_constant(kind="mse", pixels=784):
    """What reconstruction_loss leaves out of -log p(x|z) per image, in nats:
    (pixels / 2) ln(pi) = 448.7 for "mse" on MNIST, 0 for "bce"."""
    if kind not in ("mse", "bce"):
        raise ValueError(f'kind must be "mse" or "bce", not {kind!r}')
    return 0.5 * pixels * torch.tensor(torch.pi, dtype=torch.float64).log().item() if kind == "mse" else 0.0


def log_likelihood(x_prime, x, kind="mse"):
    """log p(x|z) per image in nats, the decoder's whole density at the images x
    (B, 784) or (B, 1, 28, 28), given its outputs x_prime (..., B, 784): one figure
    per image and per leading index of x_prime, summed over the pixels.

    "mse": a Gaussian of variance 1/2 on each pixel, centred on x_prime, so that
    -log p(x|z) is the squared error plus log_likelihood_constant("mse").
    "bce": a Bernoulli on each pixel with mean x_prime, exact for pixels that are 0
    or 1; its logs are clamped at -100, as binary_cross_entropy's are.
    """
    x = x.flatten(start_dim=1)
    if kind == "mse":
        return -(x_prime - x).pow(2).sum(-1) - log_likelihood_constant("mse", x.shape[1])
    if kind == "bce":
        return (x * x_prime.log().clamp(min=-100) + (1 - x) * (-x_prime).log1p().clamp(min=-100)).sum(-1)
    raise ValueError(f'kind must be "mse" or "bce", not {kind!r}')


@torch.no_grad()
def iwae_bound(model, x, k=1, recon="mse", generator=None):
    """The k-sample importance-weighted lower bound L_k on log p(x) (Burda et al.
    2015, eq. 8) for each image of x, in nats: a tensor of shape (B,).

        L_k = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_1 .. z_k ~ q(z|x)

    with the decoder's whole density p(x|z) (see log_likelihood). Averaged over
    draws, L_1 is the ELBO; L_k rises with k towards log p(x). x is (B, 784) or
    (B, 1, 28, 28); z comes from generator when one is given. The samples are
    decoded about 1024 images at a time, so memory does not grow with k (give a
    few hundred images at a time). Only the specification's attributes encoder,
    mu, logvar and decoder are used, and no gradients are kept.
    """
    log_likelihood_constant(recon)  # refuse a wrong kind before any work
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = x.flatten(start_dim=1)
    h = model.encoder(x)
    mu, logvar = model.mu(h), model.logvar(h)
    std = torch.exp(0.5 * logvar)
    chunk = max(1, 1024 // len(x))
    # Filled in place, not gathered in a list: small tensors kept between the large
    # temporaries of each chunk would fragment the heap, which then grows by gigabytes.
    log_weights = torch.empty(k, len(x), dtype=mu.dtype, device=mu.device)
    for start in range(0, k, chunk):
        eps = torch.randn((min(chunk, k - start), *mu.shape), generator=generator,
                          dtype=mu.dtype, device=mu.device)
        z = mu + std * eps
        # log p(z) - log q(z|x) for the two diagonal Gaussians; their ln(2 pi) terms cancel.
        log_prior_over_posterior = 0.5 * (eps.pow(2) + logvar - z.pow(2)).sum(-1)
        log_weights[start:start + len(eps)] = log_likelihood(model.decoder(z), x, recon) + log_prior_over_posterior
    return torch.logsumexp(log_weights, 0) - torch.tensor(float(k)).log()
