"""Train the VAE on MNIST with Adam; save its state_dict and a CSV of every epoch's figures.

    python train.py --epochs 10
"""
import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time

import torch
from tqdm import tqdm

from vae import VAE, encode, iwae_bound, kl_divergence, log_likelihood_constant, reconstruction_loss, reparameterize

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_recon", "train_kl", "test_nelbo", "test_recon", "test_kl",
                   "seconds", "nats_left_out", "binarized")  # the last two: the nats mse leaves out, --binarize

def load_mnist(data_dir, train=True, device="cpu"):
    """One MNIST split, (images (N, 784) in [0, 1], labels (N,)), from data_dir/MNIST/raw (downloaded if missing)."""
    from torchvision import datasets  # here: it takes seconds to import, and only this needs it
    raw = os.path.join(data_dir, "MNIST", "raw")
    if os.path.isfile(os.path.join(data_dir, MNIST_FILES[2])):
        raise FileNotFoundError(f"--data-dir {data_dir} holds the MNIST files themselves; give the folder above MNIST")
    try:
        split = datasets.MNIST(data_dir, train=train, download=True)
    except Exception as error:  # torchvision fails in many ways on a bad copy: say which files
        reason = (str(error).strip() or type(error).__name__).splitlines()[-1]
        if all(os.path.isfile(os.path.join(raw, name)) for name in MNIST_FILES):
            raise ValueError(f"{' or '.join(MNIST_FILES[:2] if train else MNIST_FILES[2:])} in {raw} is damaged, "
                             f"cut short or not MNIST's ({reason}); copy it there again, unzipped") from None
        raise FileNotFoundError(f"MNIST is not in {raw} and could not be downloaded ({reason}); put the files "
                                f"{', '.join(MNIST_FILES)} there, or give --data-dir the folder above MNIST") from None
    return split.data.to(device).flatten(start_dim=1).float().div_(255), split.targets.to(device)

def binarize_once(images, seed=0):
    """Each pixel drawn once as 0 or 1, its intensity the probability: the same binary test set in every run."""
    return torch.bernoulli(images.cpu(), generator=torch.Generator().manual_seed(seed)).to(images.device)

def make_optimizer(model, lr):
    """Adam, its update fused into one kernel on the CPU and CUDA (torch 2.4 has none on MPS)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=next(model.parameters()).device.type in ("cpu", "cuda"))

def make_step(model, optimizer, beta=1.0, recon="mse"):
    """step(x): one Adam update on the batch x, minimising recon + beta * KL; returns both terms, on the device."""
    def step(x):
        x_prime, mu, logvar = model(x)
        reconstruction, kl = reconstruction_loss(x_prime, x, recon), kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        (reconstruction + beta * kl).backward()
        optimizer.step()
        return torch.stack([reconstruction.detach(), kl.detach()])
    return step

def train_epoch(model, step, images, batch_size=128, binarize=False):
    """One pass of step over the shuffled (and binarized) images; returns the terms per image, on the device."""
    model.train()
    order = torch.randperm(len(images)).to(images.device)
    total = torch.zeros(2, device=images.device)
    for start in progress(range(0, len(images), batch_size)):
        x = images[order[start:start + batch_size]]
        total += step(torch.bernoulli(x) if binarize else x)
    return total / len(images)

@torch.no_grad()
def evaluate(model, images, recon="mse"):
    """The -ELBO's terms per image, z drawn from a generator seeded with 0: figures of the weights alone."""
    model.eval()
    mu, logvar = encode(model, images)
    x_prime = model.decoder(reparameterize(mu, logvar, torch.Generator(images.device).manual_seed(0)))
    return torch.stack([reconstruction_loss(x_prime, images, recon), kl_divergence(mu, logvar)]) / len(images)

def train(args):
    """Train as the flags say, saving after every epoch; Ctrl-C raises KeyboardInterrupt(what was saved).model."""
    history, rows, model, saved, where = history_path(args.out), [], None, 0, "before training began"
    kept = lambda: f"{args.out} and {history} hold epoch {saved}" if saved else f"nothing was saved to {args.out}"
    threads_before = torch.get_num_threads()
    try:
        device = pick_device(args.device)
        check_out(args.out)
        (train_images, _), (test_images, _) = (load_mnist(args.data_dir, split, device) for split in (True, False))
        test_images = binarize_once(test_images) if args.binarize else test_images
        torch.manual_seed(args.seed)
        model = VAE(z_dims=args.z_dims, num_hidden=args.hidden).to(device)
        step = make_step(model, make_optimizer(model, args.lr), args.beta, args.recon)
        if device.type == "cpu":
            step = ThreadTuner(step, args.threads, math.ceil(len(train_images) / args.batch_size))
        print(f"device: {device}" + (f" ({step.said})" if device.type == "cpu" else ""))
        for epoch in range(1, args.epochs + 1):
            where = f"in epoch {epoch}"
            start = time.perf_counter()
            train_terms = train_epoch(model, step, train_images, args.batch_size, args.binarize)
            figures = torch.cat([train_terms, evaluate(model, test_images, args.recon)]).tolist()
            seconds = time.perf_counter() - start
            for name, value in zip(("train reconstruction", "train KL", "test reconstruction", "test KL"), figures):
                if not math.isfinite(value):
                    raise FloatingPointError(f"the {name} became {value} {where}; {kept()}; try a lower --lr")
            train_recon, train_kl, test_recon, test_kl = figures
            train_loss = train_recon + args.beta * train_kl
            rows.append([round(v, 4) for v in (  # in the order of HISTORY_COLUMNS
                epoch, train_loss, train_recon, train_kl, test_recon + test_kl, test_recon, test_kl, seconds,
                log_likelihood_constant(args.recon), int(args.binarize))])
            save(model, rows, args.out)
            saved = epoch
            n = torch.get_num_threads()
            print(f"epoch {epoch}/{args.epochs}  "
                + (f"train -ELBO {train_loss:.2f} (recon {train_recon:.2f} + KL {train_kl:.2f})" if args.beta == 1
                   else f"train loss {train_loss:.2f} (recon {train_recon:.2f} + {args.beta:g} x KL {train_kl:.2f})")
                + f"  test -ELBO {test_recon + test_kl:.2f} (recon {test_recon:.2f} + KL {test_kl:.2f})  {seconds:.2f}s"
                + (f" on {n} thread{'s' * (n > 1)}" if device.type == "cpu" else ""))
        print(f"saved {args.out} and {history}")
        if args.iwae and args.beta == 0:
            print("\n--beta 0: a plain autoencoder, whose -ELBO and bound on log p(x) mean little; no bound table")
        elif args.iwae:
            where = "while bounding log p(x)"
            print("", *bound_report(iwae_table(model, test_images, args.iwae, args.recon), args.recon, args.binarize),
                  sep="\n")
    except KeyboardInterrupt:
        stop = KeyboardInterrupt(f"interrupted {where}; {kept()}")
        stop.model = model
        raise stop from None
    except BrokenPipeError:  # `| head`
        raise BrokenPipeError(f"output closed {where}; {kept()}") from None
    finally:
        torch.set_num_threads(threads_before)
    return model

@torch.no_grad()
def iwae_table(model, images, k_max=50, recon="mse", batch_size=100):
    """{k: -L_k}, the bound on -log p(x) per image in nats from k = 1 (the -ELBO), 10, ... k_max samples z ~ q(z|x)."""
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    sizes = [10**p for p in range(len(str(k_max))) if 10**p < k_max] + [k_max]
    totals = torch.zeros(len(sizes), device=images.device)
    for start in progress(range(0, len(images), batch_size)):
        x = images[start:start + batch_size]
        totals -= torch.stack([iwae_bound(model, x, k, recon, generator).sum() for k in sizes])
    return dict(zip(sizes, (totals / len(images)).tolist()))

def bound_report(table, recon="mse", binarized=False):
    """The lines train.py prints for iwae_table's table, with the gap between the ELBO and the best bound."""
    c, best = log_likelihood_constant(recon), min(table, key=table.get)
    gap = f"-L_1 - (-L_{best}) = {table[1] - table[best]:.2f} nats <= KL(q(z|x) || p(z|x)), the ELBO's gap, on average"
    return ["test -log p(x) bounds per image, from k samples z ~ q(z|x) each (-L_k; k = 1: the -ELBO):",
            "      k  -L_k, nats" + (f"  less {c:.2f}, as above" if c else ""),
            *(f"  {k:5d}  {v:10.2f}" + (f"  {v - c:10.2f}" if c else "") for k, v in table.items()),
            *([gap] if len(table) > 1 else []),
            f"(--recon mse: the -ELBO lines leave out {c:.2f} nats of the Gaussian decoder's density)" if c else
            "(--recon bce on binary pixels: log-likelihoods in nats, as papers report them)" if binarized else
            "(--recon bce on grey pixels: not a likelihood; --binarize makes it one)"]


# ---------------------------------------------------------------- the command line

def checked(convert, test, wanted):
    """An argparse type: convert the text, then refuse it unless test(value) holds."""
    def parse(text):
        with contextlib.suppress(ValueError):
            if test(convert(text)):
                return convert(text)
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return parse

def parse_args(argv=()):
    """The flags, from a list or a string of them; none means the defaults, in a notebook too."""
    count = checked(int, lambda v: v > 0, "a positive integer")
    p = argparse.ArgumentParser(prog="train.py", description="Train the MNIST VAE and save its state_dict.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=count, default=10, metavar="N", help="passes over the training set")
    p.add_argument("--batch-size", type=count, default=128, metavar="N", help="images per Adam step")
    p.add_argument("--lr", type=checked(float, lambda v: 0 < v < math.inf, "a positive finite number"),
                   default=1e-3, metavar="LR", help="Adam's learning rate")
    p.add_argument("--z-dims", type=count, default=4, metavar="N", help="latent dimensions")
    p.add_argument("--hidden", type=count, default=128, metavar="N", help="units in each hidden layer")
    p.add_argument("--beta", type=checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0"),
                   default=1.0, metavar="B", help="weight of the KL term: 1 is the true ELBO, 0 a plain autoencoder")
    p.add_argument("--recon", choices=("mse", "bce"), default="mse", help="squared error (Gaussian) or cross-entropy")
    p.add_argument("--binarize", action="store_true", help="train on pixels drawn anew as 0 or 1 each time, test "
                   "on a test set binarized once (with --recon bce: true nats)")
    p.add_argument("--iwae", type=checked(int, lambda v: v >= 0, "an integer >= 0"), default=50, metavar="K",
                   help="then bound -log p(x) on the test set with k = 1, 10, ... up to K samples; 0 skips it")
    p.add_argument("--seed", type=checked(int, lambda v: 0 <= v < 2**64, "an integer from 0 to 2**64 - 1"),
                   default=0, metavar="N", help="seeds the weights, the shuffles, z and the binary pixels")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="auto: cuda, mps or cpu")
    p.add_argument("--threads", type=checked(lambda t: t if t == "auto" else int(t), lambda v: v == "auto" or v > 0,
                   "auto or a count"), default="auto", metavar="N", help="CPU threads; auto: the fastest of 1, 2 and 4")
    p.add_argument("--data-dir", default="data", metavar="DIR", help="folder holding MNIST/raw")
    p.add_argument("--out", default="vae.pt", metavar="PATH", help="checkpoint, its history beside it (vae.csv)")
    return p.parse_args(argv.split() if isinstance(argv, str) else list(argv))

def main(argv=()):
    """train.main(["--epochs", "3"]) returns the trained model (after Ctrl-C, as trained so far)."""
    try:
        return train(parse_args(argv))
    except KeyboardInterrupt as stop:
        model = getattr(stop, "model", None)
        print(f"train.py: {stop}" + ("; returning the model as it is now" if model else ""), file=sys.stderr)
        return model


# ---------------------------------------------------------------- nothing below is about VAEs

def pick_device(name="auto"):
    """The torch.device for --device: auto takes cuda, then mps, then cpu."""
    have = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(n for n in have if have[n]) if name == "auto" else name
    if not have[name]:
        raise ValueError(f"--device {name} was asked for, but this machine (torch {torch.__version__}) has no "
                         f"{name.upper()}; use --device cpu or auto")
    return torch.device(name)

class ThreadTuner:
    """step on --threads CPU threads; with auto, on the fastest of 1, 2 and 4, timed on each epoch's first steps:
    a step's threads wait for the slowest, so one wins many times over while another program holds a core."""

    def __init__(self, step, threads, steps_per_epoch):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.counts = [n for n in (1, 2, 4) if n <= cpus] if threads == "auto" else [threads]
        self.step, self.every, self.calls = step, steps_per_epoch, 0
        self.said = (f"threads: each epoch runs on the fastest of {' and '.join(map(str, self.counts))}, timed on "
                     "its first steps") if threads == "auto" else f"{threads} thread{'s' * (threads > 1)}"

    def __call__(self, x):
        if self.calls % self.every == 0:  # an epoch begins: time 3 steps on each count, in turn
            self.queue, self.times = self.counts * 3, {n: [] for n in self.counts}
        self.calls += 1
        if not self.queue:
            return self.step(x)
        n = self.queue.pop(0)
        torch.set_num_threads(n)
        start = time.perf_counter()
        out = self.step(x)
        self.times[n].append(time.perf_counter() - start)
        if self.times[n][-1] > 3 * min(map(min, filter(None, self.times.values()))):  # so slow: time it no more
            self.queue = [m for m in self.queue if m != n]
        if not self.queue:
            torch.set_num_threads(min(self.counts, key=lambda n: statistics.median(self.times[n] or [math.inf])))
        return out

def progress(iterable):
    """A bar, erased when done: on stdout in a notebook, on stderr in a terminal, none in a file or a pipe."""
    notebook = type(sys.stdout).__module__.startswith("ipykernel.")
    return tqdm(iterable, unit="batch", leave=False, file=sys.stdout if notebook else sys.stderr,
                disable=False if notebook else None)

def history_path(checkpoint):
    """The CSV of a run's figures, beside its checkpoint: vae.csv for vae.pt."""
    return os.path.splitext(checkpoint)[0] + ".csv"

def check_out(path):
    """Refuse an --out that cannot be written, before an epoch is spent on it."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path} is a folder; give a file name such as {os.path.join(path, 'vae.pt')}")
    try:
        tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path))).close()
    except OSError as error:
        raise type(error)(f"--out {path}: cannot write in its folder ({error.strerror}); create it first") from None

def save(model, rows, path):
    """Replace the checkpoint (on the CPU, to load anywhere), then its history: HISTORY_COLUMNS, then rows."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda f: torch.save(state, f))
    text = "".join(",".join(map(str, row)) + "\n" for row in [HISTORY_COLUMNS, *rows])
    write_atomically(history_path(path), lambda f: f.write(text.encode()))

def write_atomically(path, write):
    """Replace path with what write(f) writes, never half of it: a file beside it, synced, then renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        for wait in (0.1, 0.2, 0.4, 0.8, 1.6):  # Windows refuses while a virus scanner or sync client holds path
            try:
                return os.replace(tmp, path)
            except PermissionError:
                time.sleep(wait)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches a log or a pipe as it is printed
    try:
        train(parse_args(sys.argv[1:]))
    except KeyboardInterrupt as stop:
        print(f"\ntrain.py: {stop}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError as closed:  # the Python docs' recipe for a closed stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(f"train.py: {closed}")
    except (ValueError, OSError, FloatingPointError) as error:
        sys.exit(f"train.py: error: {error}")
