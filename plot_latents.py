"""Draw a trained VAE's latent space as pictures.

    python plot_latents.py --i 0 --j 1             # writes latents_0_1.png
    python plot_latents.py --i 0 --j 1 --scatter   # and the test set's codes beside it

The grid decodes n x n latent points spread evenly over [-limit, limit]^2 in
dimensions i and j, with every other dimension at 0, the prior's mean. The scatter
shows where the encoder puts the test images, to compare with the prior N(0, I).
"""
import argparse
import math
import sys

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

from train import ArgumentParser, load_mnist, positive_float, positive_int
from vae import VAE


def load_model(path):
    """A VAE on the CPU, sized from the tensor shapes in a state_dict saved by
    train.py (or by the specification's loop), so no size flags are needed."""
    try:
        # weights_only: a checkpoint from someone else may hold tensors, never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; train one first: python train.py") from None
    except Exception:
        raise ValueError(f"{path} is not a state_dict that loads safely: only tensors are read, "
                         "never pickled objects or code; save one with "
                         "torch.save(model.state_dict(), path)") from None
    keys = VAE().state_dict().keys()
    if not (isinstance(state, dict) and state.keys() == keys
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path} is not a VAE state_dict: it must hold exactly the tensors "
                         f"{', '.join(keys)}")
    num_hidden, input_size = state["encoder.0.weight"].shape
    model = VAE(z_dims=state["mu.weight"].shape[0], input_size=input_size, num_hidden=num_hidden)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} has tensors of inconsistent shapes: "
                         f"{str(error).splitlines()[-1].strip()}") from None
    return model.eval()


def check_pair(model, i, j):
    """Refuse latent dimensions the model does not have, or a pair that is one dimension."""
    for name, k in (("i", i), ("j", j)):
        if not 0 <= k < model.z_dims:
            raise ValueError(f"{name} = {k} is not a latent dimension of this model: "
                             f"use 0 to {model.z_dims - 1}")
    if i == j:
        raise ValueError(f"i and j are both {i}: pick two different latent dimensions")


@torch.no_grad()
def plot_latents(model, i=0, j=1, n=10, limit=2.0, ax=None):
    """The specification's latent traversal: an n x n grid of decoded digits, z_i
    rising left to right along the columns and z_j bottom to top along the rows,
    both over [-limit, limit], every other dimension 0. Returns the Figure.

    Only the attributes decoder, z_dims and input_size are used, so a model of the
    specification's own class works too.
    """
    check_pair(model, i, j)
    if n < 1 or not 0 < limit < math.inf:
        raise ValueError(f"need n >= 1 and a finite limit > 0, got n = {n}, limit = {limit}")
    model.eval()
    device = next(model.parameters()).device
    side = math.isqrt(model.input_size)
    if side * side != model.input_size:
        raise ValueError(f"images of {model.input_size} pixels are not square")

    values = torch.linspace(-limit, limit, n)
    z = torch.zeros(n, n, model.z_dims)
    z[:, :, i] = values
    z[:, :, j] = values.flip(0)[:, None]  # row 0 is the top of the picture: the largest z_j
    digits = model.decoder(z.reshape(n * n, model.z_dims).to(device)).cpu()
    grid = digits.reshape(n, n, side, side).permute(0, 2, 1, 3).reshape(n * side, n * side)

    if ax is None:
        ax = plt.figure(figsize=(8, 8)).add_subplot()
    # extent puts each tile's centre at its z value, so the ticks read in z units.
    half = limit / (n - 1) if n > 1 else limit
    low, high = values[0].item() - half, values[-1].item() + half
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, extent=(low, high, low, high),
              interpolation="nearest")
    ax.set_xlabel(f"Latent dimension {i}")
    ax.set_ylabel(f"Latent dimension {j}")
    ax.set_title(f"Latent space traversal for dimensions {i} and {j}")
    return ax.figure


@torch.no_grad()
def posterior_stats(model, images):
    """The posterior means mu(x) (N, z_dims) of images, and per latent dimension the
    spread of those means Var[mu] and the mean posterior variance E[sigma^2].

    By the law of total variance the aggregate posterior q(z) has variance
    Var[mu] + E[sigma^2] in each dimension: about 1 when it matches the prior.
    """
    model.eval()
    h = model.encoder(images.flatten(start_dim=1))
    mu, logvar = model.mu(h), model.logvar(h)
    return mu, mu.var(dim=0, correction=0), logvar.exp().mean(dim=0)


def plot_posterior_means(mu, labels, i=0, j=1, limit=2.0, ax=None):
    """Scatter the posterior means (mu_i, mu_j), coloured by digit, with the square
    [-limit, limit]^2 that the traversal grid covers. Returns the Figure."""
    if ax is None:
        ax = plt.figure(figsize=(8, 8)).add_subplot()
    # Markers without antialiasing: 10,000 of them then take a few colours, not
    # thousands, and the PNG stays small.
    points = ax.scatter(mu[:, i].cpu(), mu[:, j].cpu(), c=labels.cpu(), cmap="tab10",
                        vmin=-0.5, vmax=9.5, s=6, linewidths=0, antialiased=False)
    ax.add_patch(Rectangle((-limit, -limit), 2 * limit, 2 * limit,
                           fill=False, linestyle="--", edgecolor="black", label="grid of the traversal"))
    ax.figure.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_aspect("equal")
    ax.set_xlabel(f"mu {i}")
    ax.set_ylabel(f"mu {j}")
    ax.set_title("Posterior means of the test images")
    ax.legend(loc="upper right")
    return ax.figure


def parse_args(argv=None):
    p = ArgumentParser(description="Draw the latent space of a VAE saved by train.py.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="vae.pt", metavar="PATH", help="state_dict written by train.py")
    p.add_argument("--i", type=int, default=0, metavar="I", help="latent dimension along the columns")
    p.add_argument("--j", type=int, default=1, metavar="J", help="latent dimension along the rows")
    p.add_argument("--n", type=positive_int, default=10, metavar="N", help="digits per side of the grid")
    p.add_argument("--limit", type=positive_float, default=2.0, metavar="L",
                   help="the grid spans [-limit, limit] in both dimensions")
    p.add_argument("--out", default="latents_{i}_{j}.png", metavar="PATH",
                   help="PNG to write; {i} and {j} stand for the two dimensions")
    p.add_argument("--show", action="store_true", help="also open a window")
    p.add_argument("--scatter", action="store_true",
                   help="add the test set's posterior means beside the grid (needs MNIST)")
    p.add_argument("--data-dir", default="data", metavar="DIR", help="folder holding MNIST/raw, for --scatter")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.show:
        plt.switch_backend("agg")  # draw to a file only: no display needed, no window
    out = args.out.replace("{i}", str(args.i)).replace("{j}", str(args.j))
    try:
        model = load_model(args.checkpoint)
        check_pair(model, args.i, args.j)
        if args.scatter:
            images, labels = load_mnist(args.data_dir, train=False)
            mu, spread, variance = posterior_stats(model, images)
            fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7), layout="constrained")
            plot_latents(model, args.i, args.j, args.n, args.limit, ax=left)
            plot_posterior_means(mu, labels, args.i, args.j, args.limit, ax=right)
        else:
            fig = plot_latents(model, args.i, args.j, args.n, args.limit)
        fig.savefig(out, bbox_inches="tight")
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out}")
    if args.scatter:
        print(f"\nq(z) on {len(images)} test images; by the law of total variance "
              "Var[z] = Var[mu] + E[sigma^2], about 1 where q(z) matches N(0, I):")
        print("  dim  Var[mu]  E[sigma^2]  Var[z]")
        for k, (s, v) in enumerate(zip(spread.tolist(), variance.tolist())):
            print(f"  {k:3d}  {s:7.3f}  {v:10.3f}  {s + v:6.3f}")
    if not args.show:
        plt.close(fig)
    elif plt.get_backend().lower() == "agg":
        print("no display here to --show on; open the PNG instead")
    else:
        plt.show()


if __name__ == "__main__":
    main()
