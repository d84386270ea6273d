"""Draw a trained VAE as pictures: its latent space, and the digits it generates.

    python plot_latents.py --i 0 --j 1             # writes latents_0_1.png
    python plot_latents.py --i 0 --j 1 --scatter   # writes scatter_0_1.png
    python plot_latents.py --samples               # writes samples.png

The grid decodes n x n latent points spread evenly over [-limit, limit]^2 in
dimensions i and j, with every other dimension at 0, the prior's mean. The scatter
shows where the encoder puts the test images, to compare with the prior N(0, I).
The samples are digits decoded from z ~ N(0, I), shown above test images and
their reconstructions.

Every plotting function draws on ax when given, else on a new figure, and returns
the Axes, as pandas and seaborn do; none calls plt.show().
"""
import math
import sys

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from train import ArgumentParser, HelpFormatter, load_mnist, positive_float, positive_int, silence_stdout
from vae import VAE, kl_divergence, reconstruction_loss


def load_model(path):
    """A VAE on the CPU, sized from the tensor shapes in a state_dict saved by
    train.py (or by the specification's loop), so no size flags are needed."""
    try:
        # weights_only: a checkpoint from someone else may hold tensors, never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; train one first: python train.py") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} is a folder; name the checkpoint file in it") from None
    except Exception:
        raise ValueError(f"{path} is not a state_dict that loads safely: only tensors are read, "
                         "never pickled objects or code") from None
    keys = list(VAE().state_dict())
    if not (isinstance(state, dict) and set(state) == set(keys)
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path} is not a VAE state_dict: {what_is_wrong(state, keys)}")
    num_hidden, input_size = state["encoder.0.weight"].shape
    model = VAE(z_dims=state["mu.weight"].shape[0], input_size=input_size, num_hidden=num_hidden)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} has tensors of inconsistent shapes: "
                         f"{str(error).splitlines()[-1].strip()}") from None
    return model.eval()


def what_is_wrong(state, keys):
    """A short account of how state differs from a VAE state_dict with these keys."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict of tensors"

    def some(names):
        return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")

    missing = [k for k in keys if k not in state]
    if missing:
        return f"it holds {len(state)} entries ({some(list(state))}) and lacks {some(missing)}"
    extra = [k for k in state if k not in keys]
    if extra:
        return f"it holds entries a VAE has not: {some(extra)}"
    return "some of its entries are not tensors"


def check_pair(model, i, j):
    """Refuse latent dimensions the model does not have, or a pair that is one dimension."""
    for name, k in (("i", i), ("j", j)):
        if not 0 <= k < model.z_dims:
            raise ValueError(f"{name} = {k} is not a latent dimension of this model: "
                             f"use 0 to {model.z_dims - 1}")
    if i == j:
        raise ValueError(f"i and j are both {i}: pick two different latent dimensions")


def device_of(model):
    return next(model.parameters()).device


def axes_or_new(ax, size):
    """ax, or the Axes of a new pyplot figure of size inches, which Jupyter shows once."""
    return ax if ax is not None else plt.figure(figsize=size).add_subplot()


def tile(images, rows, cols):
    """rows * cols flat square images, row-major, as one picture without gaps."""
    side = math.isqrt(images.shape[1])
    if side * side != images.shape[1]:
        raise ValueError(f"images of {images.shape[1]} pixels are not square")
    return (images.reshape(rows, cols, side, side).permute(0, 2, 1, 3)
            .reshape(rows * side, cols * side).cpu().numpy())


def show_tiles(ax, picture, **kwargs):
    """Grey levels as decoded, 0 black and 1 white; pixels kept square and sharp."""
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)


@torch.no_grad()
def plot_latents(model, i=0, j=1, n=10, limit=2.0, ax=None):
    """The specification's latent traversal: an n x n grid of decoded digits, z_i
    rising left to right along the columns and z_j bottom to top along the rows,
    both over [-limit, limit], every other dimension 0. Returns the Axes.

    Only the attributes decoder and z_dims are used, so a model of the
    specification's own class works too.
    """
    check_pair(model, i, j)
    if n < 1 or not 0 < limit < math.inf:
        raise ValueError(f"need n >= 1 and a finite limit > 0, got n = {n}, limit = {limit}")
    model.eval()
    values = torch.linspace(-limit, limit, n)
    z = torch.zeros(n, n, model.z_dims)
    z[:, :, i] = values
    z[:, :, j] = values.flip(0)[:, None]  # row 0 is the top of the picture: the largest z_j
    picture = tile(model.decoder(z.reshape(n * n, model.z_dims).to(device_of(model))), n, n)

    ax = axes_or_new(ax, (8, 8))
    # extent puts each tile's centre at its z value, so the ticks read in z units.
    half = limit / (n - 1) if n > 1 else limit
    low, high = values[0].item() - half, values[-1].item() + half
    show_tiles(ax, picture, extent=(low, high, low, high))
    ax.set_xlabel(f"Latent dimension {i}")
    ax.set_ylabel(f"Latent dimension {j}")
    ax.set_title(f"Latent space traversal for dimensions {i} and {j}")
    return ax


@torch.no_grad()
def plot_samples(model, n=10, seed=0, ax=None):
    """What the VAE generates: n x n digits decoded from z ~ N(0, I), the prior.
    Digit k sits at row k // n, column k % n. Returns the Axes.

    z is drawn on the CPU from a generator seeded with seed, so one seed gives the
    same z on every device and for every model with as many latent dimensions:
    two models can be compared on the very same codes.
    """
    if n < 1:
        raise ValueError(f"need n >= 1, got n = {n}")
    model.eval()
    z = torch.randn(n * n, model.z_dims, generator=torch.Generator().manual_seed(seed))
    picture = tile(model.decoder(z.to(device_of(model))), n, n)

    ax = axes_or_new(ax, (8, 8))
    show_tiles(ax, picture)
    ax.set_axis_off()
    ax.set_title(f"{n * n} samples from the prior N(0, I)")
    return ax


@torch.no_grad()
def reconstruct(model, images):
    """decoder(mu(x)): the reconstruction from the posterior mean, the same every
    time, unlike forward, which decodes a random sample of z."""
    return model.decoder(model.mu(model.encoder(images.flatten(start_dim=1))))


@torch.no_grad()
def plot_reconstructions(model, images, n=10, ax=None):
    """The first n of images, shaped (N, 784) or (N, 1, 28, 28) with pixels in
    [0, 1], in the top row, and their reconstructions decoder(mu(x)) below.
    Returns the Axes."""
    images = torch.as_tensor(images)
    if not 1 <= n <= len(images):
        raise ValueError(f"need 1 <= n <= {len(images)}, the number of images; got n = {n}")
    x = images[:n].flatten(start_dim=1).float().to(device_of(model))
    if x.min() < 0 or x.max() > 1:
        raise ValueError("pixels must lie in [0, 1], as the model was trained on; "
                         "divide images of 0 to 255 by 255")
    model.eval()
    picture = tile(torch.cat([x, reconstruct(model, x)]), 2, n)

    ax = axes_or_new(ax, (n, 2.4))
    show_tiles(ax, picture)
    side = picture.shape[0] // 2
    ax.set_xticks([])
    ax.set_yticks([side / 2 - 0.5, 3 * side / 2 - 0.5], ["image", "decode(mu)"])
    ax.tick_params(length=0)
    ax.set_title("Test images and their reconstructions")
    return ax


@torch.no_grad()
def posterior_stats(model, images):
    """The posterior means mu(x) (N, z_dims) of images and, per latent dimension,
    the spread of those means Var[mu], the mean posterior variance E[sigma^2], and
    the mean KL(q(z_k|x) || N(0, 1)); these KLs sum to the ELBO's KL term.

    By the law of total variance the aggregate posterior q(z) has variance
    Var[mu] + E[sigma^2] in each dimension: about 1 when it matches the prior.
    """
    model.eval()
    h = model.encoder(images.flatten(start_dim=1))
    mu, logvar = model.mu(h), model.logvar(h)
    kl = torch.stack([kl_divergence(mu[:, k], logvar[:, k]) for k in range(mu.shape[1])]) / len(mu)
    return mu, mu.var(dim=0, correction=0), logvar.exp().mean(dim=0), kl


def plot_posterior_means(mu, labels, i=0, j=1, limit=2.0, ax=None):
    """Scatter the posterior means (mu_i, mu_j), coloured by digit, with the square
    [-limit, limit]^2 that the traversal grid covers. Returns the Axes."""
    ax = axes_or_new(ax, (8, 8))
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
    return ax


# The three views of the command line. Each loads what it needs, then draws on a
# figure from new_figure, and returns that figure and the lines to print.

def draw_latents(new_figure, model, args):
    fig = new_figure(figsize=(8, 8), layout="constrained")
    plot_latents(model, args.i, args.j, args.n, args.limit, ax=fig.add_subplot())
    return fig, []


def draw_scatter(new_figure, model, args):
    """The grid beside the test images' posterior means, and the table of q(z)."""
    images, labels = load_mnist(args.data_dir, train=False)
    mu, spread, variance, kl = posterior_stats(model, images)
    fig = new_figure(figsize=(14, 7), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_latents(model, args.i, args.j, args.n, args.limit, ax=left)
    plot_posterior_means(mu, labels, args.i, args.j, args.limit, ax=right)
    rows = zip(spread.tolist(), variance.tolist(), kl.tolist())
    return fig, [f"\nq(z) on {len(images)} test images; by the law of total variance "
                 "Var[z] = Var[mu] + E[sigma^2], about 1 where q(z) matches N(0, I):",
                 "  dim  Var[mu]  E[sigma^2]  Var[z]     KL",
                 *(f"  {k:3d}  {s:7.3f}  {v:10.3f}  {s + v:6.3f}  {d:5.3f}" for k, (s, v, d) in enumerate(rows)),
                 f"KL per image {kl.sum().item():.2f}: the sum of the column, and the test KL train.py printed"]


def draw_samples(new_figure, model, args):
    """Prior samples above test images and their reconstructions, and the
    reconstruction error over the whole test set."""
    images, _ = load_mnist(args.data_dir, train=False)
    fig = new_figure(figsize=(8, 9.3), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[5, 1])
    plot_samples(model, args.n, args.seed, ax=top)
    plot_reconstructions(model, images, 10, ax=bottom)
    error = reconstruction_loss(reconstruct(model, images), images).item() / len(images)
    return fig, [f"decode(mu) reconstructs the {len(images)} test images "
                 f"with a squared error of {error:.2f} per image"]


VIEWS = {  # what each view draws, and the PNG it writes unless --out says otherwise
    "latents": (draw_latents, "latents_{i}_{j}.png"),
    "scatter": (draw_scatter, "scatter_{i}_{j}.png"),
    "samples": (draw_samples, "samples.png"),
}


def parse_args(argv=None):
    p = ArgumentParser(prog="plot_latents.py", formatter_class=HelpFormatter,
                       description="Draw the latent space of a VAE saved by train.py, or the digits it generates.")
    p.add_argument("--checkpoint", default="vae.pt", metavar="PATH", help="state_dict written by train.py")
    p.add_argument("--i", type=int, default=0, metavar="I", help="latent dimension along the columns")
    p.add_argument("--j", type=int, default=1, metavar="J", help="latent dimension along the rows")
    p.add_argument("--n", type=positive_int, default=10, metavar="N",
                   help="digits per side of the grid, or of the samples with --samples")
    p.add_argument("--limit", type=positive_float, default=2.0, metavar="L",
                   help="the grid spans [-limit, limit] in both dimensions")
    p.add_argument("--out", metavar="PATH",
                   help="PNG to write; {i} and {j} stand for the two dimensions (default: latents_{i}_{j}.png; "
                        "scatter_{i}_{j}.png with --scatter; samples.png with --samples)")
    p.add_argument("--show", action="store_true", help="also open a window")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--scatter", action="store_true",
                      help="add the test set's posterior means beside the grid and print their spread (needs MNIST)")
    view.add_argument("--samples", action="store_true",
                      help="draw digits from the prior N(0, I), with test images and their reconstructions "
                           "below (needs MNIST)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for the z of --samples")
    p.add_argument("--data-dir", default="data", metavar="DIR",
                   help="folder holding MNIST/raw, for --scatter and --samples")
    return p.parse_args(argv)


def main(argv=None):
    """The command line, callable from a notebook too: it writes a PNG and, unless
    --show asks for a window, leaves pyplot as it was (no figure, no backend switch)."""
    args = parse_args(argv)
    draw, default_out = VIEWS["samples" if args.samples else "scatter" if args.scatter else "latents"]
    out = (args.out or default_out).replace("{i}", str(args.i)).replace("{j}", str(args.j))
    try:
        model = load_model(args.checkpoint)
        if not args.samples:
            check_pair(model, args.i, args.j)
        # A Figure of its own needs no display and no backend; pyplot only to show it.
        fig, report = draw(plt.figure if args.show else Figure, model, args)
        fig.savefig(out, bbox_inches="tight")
        print(f"wrote {out}", *report, sep="\n", flush=True)
    except BrokenPipeError:
        silence_stdout()
        sys.exit(1)
    except (ValueError, OSError) as error:
        sys.exit(f"plot_latents.py: error: {error}")
    except KeyboardInterrupt:
        print("\nplot_latents.py: interrupted", file=sys.stderr)
        sys.exit(130)
    if not args.show:
        return
    if plt.get_backend().lower() == "agg":
        plt.close(fig)
        print("no display here to --show on; open the PNG instead")
    else:
        plt.show()


if __name__ == "__main__":
    main()
