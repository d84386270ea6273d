"""Train the VAE on MNIST (or Fashion-MNIST) with Adam; save its state_dict and a CSV of each epoch.

python train.py --epochs 10
python train.py --resume --epochs 30   # go on to epoch 30, as if never stopped
"""

import argparse
import contextlib
import csv
import io
import math
import os
import sys
import time

# MKL's strict reproducible mode: matrix products give the same bits on any number of threads,
# so the count chosen each epoch never changes the weights. MKL reads it at torch's first product.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch
from torchvision import datasets
from tqdm import tqdm

import vae

DATASETS = {"mnist": datasets.MNIST, "fashion": datasets.FashionMNIST}
# The flags that shape the weights: --resume reads them back and refuses others.
TRAINING_FLAGS = "dataset z_dims hidden lr beta recon batch_size binarize seed".split()


def train_epoch(model, optimizer, images, batch_size=128, beta=1.0, recon="mse", binarize=False):
    """One pass of Adam over the shuffled images, each batch's loss recon + beta * KL. Returns both
    terms per image, on the device."""
    model.train()
    order = torch.randperm(len(images)).to(images.device)
    total = torch.zeros(2, device=images.device)
    for start in progress(range(0, len(images), batch_size)):
        x = images[order[start : start + batch_size]]
        if binarize:
            x = torch.bernoulli(x)  # pixels drawn anew as 0 or 1, each time an image is used
        x_prime, mu, logvar = model(x)
        reconstruction = vae.reconstruction_loss(x_prime, x, recon)
        kl = vae.kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        (reconstruction + beta * kl).backward()
        optimizer.step()
        total += torch.stack([reconstruction.detach(), kl.detach()])
    return total / len(images)


@torch.no_grad()
def evaluate(model, images, recon="mse"):
    """The -ELBO's two terms per image, z from a generator of its own: figures of the weights."""
    model.eval()
    mu, logvar = vae.encode(model, images)
    z = vae.reparameterize(mu, logvar, torch.Generator(images.device).manual_seed(0))
    reconstruction = vae.reconstruction_loss(model.decoder(z), images, recon)
    return torch.stack([reconstruction, vae.kl_divergence(mu, logvar)]) / len(images)


def make_optimizer(model, lr):
    """Adam, its update fused into one kernel on the CPU and CUDA (torch 2.4 has none on MPS)."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def fastest_threads(model, images, batch_size=128, passes=10):
    """Set torch to the thread count, of 1, 2 and 4 as far as the CPUs go, that now runs a batch's
    forward and backward passes fastest, and return it. A step's threads wait for the slowest, so
    while another program holds a core one thread can be many times faster than two."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    seconds = {}
    model.eval()  # a student's batch norm keeps its statistics
    x = images[:batch_size]
    for count in [count for count in (1, 2, 4) if count <= cpus]:
        torch.set_num_threads(count)
        start = time.perf_counter()
        for _ in range(passes):  # together, long enough to feel another program's share
            mu, logvar = vae.encode(model, x)
            loss = vae.negative_elbo(model.decoder(mu), x, mu, logvar)
            torch.autograd.grad(loss, list(model.parameters()))  # the weights' grads untouched
            if time.perf_counter() - start > min(seconds.values(), default=math.inf):
                break  # slower than a count already timed
        seconds[count] = time.perf_counter() - start
    fastest = min(seconds, key=seconds.get)
    torch.set_num_threads(fastest)
    return fastest


def train(args, run=None):
    """Train as the flags say, from the start or on from a saved run, saving after each epoch;
    returns the model. Ctrl-C stops it with a line saying what was saved."""
    torch.set_num_threads(1 if args.threads == "auto" else args.threads)  # loading gains nothing
    device = pick_device(args.device)
    images = load_mnist(args.data_dir, True, device, args.dataset)[0]
    test_images = load_mnist(args.data_dir, False, device, args.dataset)[0]
    if args.binarize:
        test_images = binarize_once(test_images)
    torch.manual_seed(args.seed)
    model = vae.VAE(z_dims=args.z_dims, num_hidden=args.hidden).to(device)
    optimizer = make_optimizer(model, args.lr)
    history = restore(run, model, optimizer) if run else []
    if len(history) >= args.epochs:
        done = f"{args.out} holds epoch {len(history)} of --epochs {args.epochs}"
        print(f"{done}: nothing left to do")
        return model
    if history:
        print(f"resuming {args.out} after epoch {len(history)}")
    print(f"device: {device}")
    try:
        for epoch in range(len(history) + 1, args.epochs + 1):
            start = time.perf_counter()
            if args.threads == "auto" and device.type == "cpu":
                fastest_threads(model, images, args.batch_size)
            train_terms = train_epoch(
                model, optimizer, images, args.batch_size, args.beta, args.recon, args.binarize
            )
            test_terms = evaluate(model, test_images, args.recon)
            row = epoch_row(epoch, train_terms, test_terms, time.perf_counter() - start, args)
            history.append(row)
            save(model, optimizer, history, args)
            print(epoch_line(row, args, device))
        print(f"saved {args.out} and {beside(args.out, '.csv')}")
        report_bound(model, test_images, args)
    except KeyboardInterrupt:
        say_interrupted(args, len(history))
    return model


def epoch_row(epoch, train_terms, test_terms, seconds, args):
    """An epoch's row of the history, its figures per image and their units; FloatingPointError
    if one is not a number."""
    train_recon, train_kl = train_terms.tolist()
    test_recon, test_kl = test_terms.tolist()
    figures = {
        "epoch": epoch,
        "train_loss": train_recon + args.beta * train_kl,
        "train_recon": train_recon,
        "train_kl": train_kl,
        "test_nelbo": test_recon + test_kl,
        "test_recon": test_recon,
        "test_kl": test_kl,
        "seconds": seconds,
        "nats_left_out": vae.log_likelihood_constant(args.recon),  # the units: see the README
        "binarized": int(args.binarize),
    }
    for name in ("train_recon", "train_kl", "test_recon", "test_kl"):
        if not math.isfinite(figures[name]):
            kept = f"{counted(epoch - 1, 'good epoch')} kept in {args.out}"
            fix = "train anew with a lower --lr and another --out"
            if epoch == 1:
                kept = "nothing was saved"
                fix = "train again with a lower --lr"
            raise FloatingPointError(
                f"{name} became {figures[name]} in epoch {epoch}; {kept}; {fix}"
            )
    return {**{name: round(value, 4) for name, value in figures.items()}, "dataset": args.dataset}


def epoch_line(row, args, device):
    train = "train -ELBO {train_loss:.2f} (recon {train_recon:.2f} + KL {train_kl:.2f})"
    if args.beta != 1:  # recon + beta * KL: what Adam minimised
        train = train.replace("-ELBO", "loss").replace("KL", "{beta:g} x KL")
    test = "test -ELBO {test_nelbo:.2f} (recon {test_recon:.2f} + KL {test_kl:.2f})"
    line = "  ".join(["epoch {epoch}/{epochs}", train, test, "{seconds:.2f}s"])
    line = line.format(**row, epochs=args.epochs, beta=args.beta)
    if device.type == "cpu":
        line += f" on {counted(torch.get_num_threads(), 'thread')}"
    return line


def report_bound(model, test_images, args):
    if args.iwae and args.beta == 0:
        print("\n--beta 0: a plain autoencoder, whose bound on log p(x) means little: no table")
    elif args.iwae:
        table = iwae_table(model, test_images, args.iwae, args.recon)
        print("", *bound_report(table, args.recon, args.binarize), sep="\n")


@torch.no_grad()
def iwae_table(model, images, k_max=50, recon="mse", batch_size=100):
    """{k: -L_k}: the mean bound on -log p(x) in nats for k = 1, 10, ... k_max, z seeded with 0."""
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    sizes = [10**p for p in range(len(str(k_max))) if 10**p < k_max] + [k_max]
    totals = torch.zeros(len(sizes), device=images.device)
    for start in progress(range(0, len(images), batch_size)):
        x = images[start : start + batch_size]
        totals -= torch.stack([vae.iwae_bound(model, x, k, recon, generator).sum() for k in sizes])
    return dict(zip(sizes, (totals / len(images)).tolist()))


def bound_report(table, recon="mse", binarized=False):
    """The lines train.py prints for iwae_table's table, and what its first and last rows say."""
    left_out = vae.log_likelihood_constant(recon)
    lines = ["test -log p(x) bounds per image, from k samples z ~ q(z|x) (-L_k; k = 1: the -ELBO):"]
    header = "      k  -L_k, nats"
    rows = [f"  {k:5d}  {bound:10.2f}" for k, bound in table.items()]
    if left_out:
        header += f"  less {left_out:.2f}, as above"
        rows = [f"{row}  {bound - left_out:10.2f}" for row, bound in zip(rows, table.values())]
    lines += [header, *rows]
    if len(table) > 1:
        gap = f"-L_1 - (-L_{max(table)}) = {table[1] - table[max(table)]:.2f} nats"
        lines.append(f"{gap}: on average the ELBO falls short of log p(x) by at least this")
    if not left_out and not binarized:
        lines.append("(--recon bce on grey pixels: not a likelihood; --binarize makes it one)")
    return lines


def load_mnist(data_dir, train=True, device="cpu", dataset="mnist"):
    """One split of MNIST (or "fashion": Fashion-MNIST) from data_dir/MNIST/raw (FashionMNIST/raw),
    downloaded if missing: images (N, 784) in [0, 1], and labels."""
    kind = DATASETS[dataset]
    raw = os.path.join(data_dir, kind.__name__, "raw")
    files = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    inside = os.path.isfile(os.path.join(data_dir, files[2]))  # the raw folder itself
    if inside or os.path.isdir(os.path.join(data_dir, "raw")):  # or MNIST/
        given = f"--data-dir {data_dir} is inside the data"
        raise FileNotFoundError(f"{given}: give the folder that holds {kind.__name__}/raw")
    try:
        split = kind(data_dir, train=train, download=True)
    except Exception:  # torchvision fails in many ways on a bad copy: say which files
        if not all(os.path.isfile(os.path.join(raw, name)) for name in files):
            fix = "copy its four files there (README: Troubleshooting)"
            missing = f"no {kind.__name__} in {raw}, and no download"
            raise FileNotFoundError(f"{missing}: {fix}") from None
        names = " or ".join(files[:2] if train else files[2:])
        raise ValueError(f"{names} in {raw} is damaged: copy it there again, unzipped") from None
    return split.data.to(device).flatten(start_dim=1).float().div_(255), split.targets.to(device)


def binarize_once(images, seed=0):
    """Each pixel drawn once as 0 or 1 (its intensity the probability): the same in every run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.cpu(), generator=generator).to(images.device)


def parse_args(argv=(), saved=None):
    """The flags, from a list or a string of them; none means the defaults, in a notebook too.
    `saved`, a run's TRAINING_FLAGS, replaces their defaults."""
    count = checked(int, lambda v: v > 0, "a positive integer")
    rate = checked(float, lambda v: 0 < v < math.inf, "a positive number")
    weight = checked(float, lambda v: 0 <= v < math.inf, "a number >= 0")
    samples = checked(int, lambda v: v >= 0, "an integer >= 0")
    seed = checked(int, lambda v: 0 <= v < 2**64, "from 0 to 2**64 - 1")
    threads = checked(lambda t: t if t == "auto" else int(t), lambda v: v != 0, "auto or a count")
    p = ArgumentParser(prog="train.py")
    p.add_argument("--epochs", type=count, default=10, help="passes over the data, in all")
    p.add_argument("--resume", action="store_true", help="go on with the run saved at --out")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="fashion: Fashion-MNIST")
    p.add_argument("--batch-size", type=count, default=128, help="images per Adam step")
    p.add_argument("--lr", type=rate, default=1e-3, help="Adam's learning rate")
    p.add_argument("--z-dims", type=count, default=4, help="latent dimensions")
    p.add_argument("--hidden", type=count, default=128, help="units per hidden layer")
    p.add_argument("--beta", type=weight, default=1.0, help="the KL's weight: 0, an autoencoder")
    p.add_argument("--recon", choices=("mse", "bce"), default="mse", help="the decoder's loss")
    p.add_argument("--binarize", action="store_true", help="pixels drawn as 0 or 1 (for nats)")
    p.add_argument("--iwae", type=samples, default=50, help="bound log p(x) by up to IWAE z")
    p.add_argument("--seed", type=seed, default=0, help="seeds the weights, batches, z, pixels")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--threads", type=threads, default="auto", help="auto: the fastest of 1, 2, 4")
    p.add_argument("--data-dir", default="data", help="the folder that holds MNIST/raw")
    p.add_argument("--out", default="vae.pt", help="checkpoint; beside it .csv and .resume.pt")
    argv = argv.split() if isinstance(argv, str) else list(argv)
    return p.parse_args(argv, argparse.Namespace(**saved) if saved else None)


def main(argv=()):
    """train.main(["--epochs", "3"]) in a notebook: the trained model (after Ctrl-C, as it is)."""
    args = parse_args(argv)
    run = load_run(args.out)
    if run and args.resume:  # the saved run's flags, and its --epochs, as defaults
        args = parse_args(argv, {**run["flags"], "epochs": run["epochs"]})
    if run:  # the same flags go on with it, as if never stopped
        check_same_run(args, run)
    elif args.resume:
        print(f"--resume: no run saved at {args.out}; starting a new one")
    threads = torch.get_num_threads()
    try:
        return train(args, run)
    finally:
        torch.set_num_threads(threads)  # a notebook's own setting, as before training


# ---------------------------------------------------------------- nothing below is about VAEs


def pick_device(name="auto"):
    """The torch.device for --device: auto takes cuda, then mps, then cpu."""
    have = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next((n for n in have if have[n]), "cpu")
    elif name != "cpu" and not have[name]:
        found = f"torch {torch.__version__} sees no {name.upper()} here"
        raise ValueError(f"--device {name}: {found}; leave --device out to use the CPU")
    return torch.device(name)


def counted(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def checked(convert, test, wanted):
    """An argparse type: convert the text, then refuse it unless test(value) holds."""

    def parse(text):
        with contextlib.suppress(ValueError):
            value = convert(text)
            if test(value):
                return value
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")

    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with defaults in --help, and a ValueError for a bad flag in a notebook."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)

    def error(self, message):
        if in_notebook():
            raise ValueError(f"{self.prog}: {message}")
        super().error(message)


def in_notebook():
    return type(sys.stdout).__module__.startswith("ipykernel.")


def progress(iterable):
    """A bar, erased when done: on stderr in a terminal, none in a log; in a notebook, whose saved
    file keeps every redraw, none for the first 10 seconds, then a redraw each 10 seconds."""
    if in_notebook():
        return tqdm(iterable, unit="batch", leave=False, delay=10, mininterval=10)
    return tqdm(iterable, unit="batch", leave=False, disable=None)


def say_interrupted(args, saved):
    """Ctrl-C: say what the files hold; a script ends, a notebook gets the model back."""
    kept = f"nothing was saved to {args.out}"
    if saved:
        kept = f"{args.out} and {beside(args.out, '.csv')} hold epoch {saved}"
    if 0 < saved < args.epochs:
        kept += f"; {resume_command(args)} goes on from there"
    print(f"\ntrain.py: interrupted; {kept}", file=sys.stderr)
    if not in_notebook():
        sys.exit(130)  # as after any Ctrl-C
    print("returning the model as it is now", file=sys.stderr)


def beside(checkpoint, ending):
    """A file kept beside a checkpoint: for vae.pt, vae.csv (the history) or vae.resume.pt."""
    return os.path.splitext(checkpoint)[0] + ending


def load_run(out):
    """The run saved at out, as save wrote it, or None where there is none; before an epoch is
    spent, an --out that cannot be written is refused."""
    if os.path.isdir(out) or not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise OSError(f"--out {out}: give a file name in a folder that exists")
    path = beside(out, ".resume.pt")
    new = "give --out a new name for a new run"
    if not os.path.exists(path) and os.path.exists(out):  # from elsewhere, or from before --resume
        raise FileExistsError(f"{out} exists without the {path} that goes on with it; {new}")
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def check_same_run(args, run):
    """A run saved at --out is never replaced. --resume goes on with it, refusing a flag that would
    change its weights; the same command again finds nothing left to do; anything else is refused,
    before anything is written, with the command that goes on."""
    saved = len(run["history"])
    other = [name for name, value in run["flags"].items() if getattr(args, name) != value]
    new = "give --out a new name for a new run"
    if other:
        flag = f"--{other[0].replace('_', '-')}"
        trained = f"{args.out} was trained with {flag} {run['flags'][other[0]]}"
        if args.resume:
            raise ValueError(f"--resume: {trained}; leave {flag} out, or {new}")
        go_on = resume_command(args, args.epochs if args.epochs > run["epochs"] else None)
        raise FileExistsError(f"{trained}; to go on with it: {go_on}; or {new}")
    holds = f"{args.out} holds {counted(saved, 'epoch')}"
    if saved > args.epochs:
        raise FileExistsError(f"{holds}, more than --epochs {args.epochs}; {new}")
    if saved < args.epochs and not args.resume:
        go_on = resume_command(args, args.epochs)
        raise FileExistsError(f"{holds} of this run; to go on: {go_on}; or {new}")


def resume_command(args, epochs=None):
    """How to go on with the run at --out: a command line, or in a notebook the call of main."""
    flags = f"--resume --out {args.out}" + (f" --epochs {epochs}" if epochs else "")
    if args.data_dir != "data":
        flags += f" --data-dir {args.data_dir}"
    return f'train.main("{flags}")' if in_notebook() else f"python train.py {flags}"


def save(model, optimizer, history, args):
    """The checkpoint (a state_dict on the CPU, to load anywhere), its history, and last the run
    that --resume goes on with, so that it is never ahead of the other two."""
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    device = next(model.parameters()).device
    random = {"cpu": torch.get_rng_state()}  # the shuffles; z and pixels too on the CPU
    if device.type != "cpu":  # z and pixels drawn on a GPU
        random[device.type] = torch.get_device_module(device).get_rng_state()
    run = {
        "epochs": args.epochs,
        "flags": {name: getattr(args, name) for name in TRAINING_FLAGS},
        "history": history,
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "random": random,
    }
    table = io.StringIO()
    writer = csv.DictWriter(table, history[0].keys(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomically(args.out, lambda f: torch.save(weights, f))
    write_atomically(beside(args.out, ".csv"), lambda f: f.write(table.getvalue().encode()))
    write_atomically(beside(args.out, ".resume.pt"), lambda f: torch.save(run, f))


def restore(run, model, optimizer):
    """Put a saved run's weights, Adam's moments and random state back; returns its history."""
    model.load_state_dict(run["model"])
    optimizer.load_state_dict(run["optimizer"])
    torch.set_rng_state(run["random"]["cpu"])
    device = next(model.parameters()).device
    if device.type in run["random"] and device.type != "cpu":  # saved on this kind of GPU
        torch.get_device_module(device).set_rng_state(run["random"][device.type])
    return run["history"]


def write_atomically(path, write):
    """Replace path with what write(f) writes, never half of it: written beside it, then renamed."""
    with open(f"{path}.tmp", "wb") as f:
        write(f)
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches a log or a pipe as printed
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # before training began: nothing was written
        print("\ntrain.py: interrupted before training began; nothing was changed", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, FloatingPointError) as error:
        sys.exit(f"train.py: error: {error}")
