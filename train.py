"""Train the VAE on MNIST with Adam and save its state_dict, with the history of its figures.

    python train.py --epochs 10

Both MNIST splits are loaded once into tensors on the device. Each epoch shuffles
the training images and slices them into batches, so no DataLoader or per-image
transform runs, and the losses are summed on the device and read once per epoch.
After every epoch the checkpoint (vae.pt) and a CSV of every epoch's figures
(vae.csv) are rewritten atomically. After the last, the test set's importance-
weighted bound on log p(x) is printed (--iwae).
"""
import argparse
import contextlib
import csv
import errno
import io
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
import time

import torch
from tqdm import tqdm

from vae import VAE, iwae_bound, kl_divergence, log_likelihood_constant, reconstruction_loss

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# One row per epoch in the CSV beside a checkpoint. The last two say what the figures
# measure: the nats --recon mse leaves out (448.73; 0 for bce), and 1 for --binarize.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_recon", "train_kl", "test_nelbo", "test_recon", "test_kl",
                   "seconds", "nats_left_out", "binarized")


def load_mnist(data_dir, train=True, device="cpu"):
    """One MNIST split as (images, labels) on device: images (N, 784) float in [0, 1].

    Downloads into data_dir/MNIST/raw when the files are not there yet; raises
    FileNotFoundError, saying where to put them, when that fails, and ValueError
    when they are there but do not load.
    """
    from torchvision import datasets  # here, not above: it takes seconds to import, and only this needs it
    raw = os.path.join(data_dir, "MNIST", "raw")
    if all(os.path.isfile(os.path.join(data_dir, name)) for name in MNIST_FILES):
        raise FileNotFoundError(f"--data-dir {data_dir} holds the MNIST files themselves; point it at "
                                "the folder two levels up, the one that holds MNIST/raw")
    try:
        split = datasets.MNIST(data_dir, train=train, download=True)
    except Exception as error:  # torchvision fails in many ways on a bad file: say which files
        reason = (str(error).strip() or type(error).__name__).splitlines()[-1]
        if all(os.path.isfile(os.path.join(raw, name)) for name in MNIST_FILES):
            images, labels = MNIST_FILES[:2] if train else MNIST_FILES[2:]
            raise ValueError(f"{images} or {labels} in {raw} is damaged, cut short or not MNIST's "
                             f"({reason}); copy it there again, unzipped") from None
        raise FileNotFoundError(
            f"MNIST is not in {raw} and could not be downloaded ({reason}); "
            f"put the four files {', '.join(MNIST_FILES)} there, "
            f"or point --data-dir at the folder that holds MNIST/raw") from None
    images = split.data.to(device).flatten(start_dim=1).float().div_(255)
    return images, split.targets.to(device)


def binarize_once(images, seed=0):
    """Each pixel drawn once as 0 or 1 with its intensity as the probability, on the
    CPU from a generator of its own: the same binary images in every run, on every
    device, whatever the global random state."""
    return torch.bernoulli(images.cpu(), generator=torch.Generator().manual_seed(seed)).to(images.device)


def pick_device(name="auto"):
    """The torch.device for --device: auto takes cuda, then mps, then cpu."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"--device {name} was asked for, but this machine (torch "
                         f"{torch.__version__}) has no {name.upper()}; use --device cpu or auto")
    return torch.device(name)


def default_threads():
    """How many threads train on the CPU: half the CPUs this process may use, 1 to 4.

    A training step is about a hundred small operations, each split among the
    threads and each ending when the slowest thread is done. When another program
    takes a core that one of the threads needs, every one of those waits lasts as
    long as the system takes to give that thread its turn back: on a 2-core machine
    with one core busy, 2 threads trained 2.3 to 5 times slower than 1 thread did
    (69 times, in one measurement of two trainings at once).
    Half the CPUs leaves room for that program, or for a second training. More
    than 4 cannot help: the step's largest element-wise operations (128 x 784
    values) are split into at most 4 pieces.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cpus // 2))


def make_optimizer(model, lr):
    """Adam, with the fused kernel that updates all parameters in one go on the CPU
    and CUDA, where torch 2.4 has it; MPS gained it only in torch 2.5, so there it
    is torch's default. On CUDA it is capturable, so that a CUDA graph can record
    its step."""
    device = next(model.parameters()).device.type
    if device in ("cpu", "cuda"):
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=device == "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr)


def make_step(model, optimizer, beta=1.0, recon="mse"):
    """The training step: step(x) makes one Adam update on the batch x, minimising
    reconstruction + beta * KL, and returns the batch's summed reconstruction and
    KL terms as one tensor of two, still on the device."""
    def step(x):
        x_prime, mu, logvar = model(x)
        reconstruction, kl = reconstruction_loss(x_prime, x, recon), kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        (reconstruction + beta * kl).backward()
        optimizer.step()
        return torch.stack([reconstruction.detach(), kl.detach()])
    return step


class CUDAGraphStep:
    """A training step replayed from a CUDA graph, for batches of one fixed shape.

    The model is so small that on a GPU, launching its hundred-odd kernels one by
    one from Python takes about ten times longer than running them. A CUDA graph
    records one step's kernels once and launches them all in a single call, reading
    the batch from a fixed buffer. It computes exactly what step computes, fresh
    random z included, and like step returns figures the caller can keep. CUDA asks
    for a few ordinary steps, on a side stream, before recording; batches of another
    shape (the last, partial one) run ordinarily.

    Gradients live in the graph's own buffers: after a replay, the parameters' .grad
    attributes may hold an older step's gradients (those of the last ordinary step).
    """

    def __init__(self, step, batch_shape, warmup=3):
        self.step, self.warmup = step, warmup
        self.x = torch.zeros(batch_shape, device="cuda")
        self.side = torch.cuda.Stream()
        self.graph = self.out = None

    def __call__(self, x):
        if x.shape != self.x.shape:
            return self.step(x)
        self.x.copy_(x)
        if self.warmup:
            self.warmup -= 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = self.step(self.x)
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.step(self.x)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out in place


def in_notebook():
    """True in a Jupyter kernel (Colab's included), whose streams are ipykernel's."""
    return type(sys.stdout).__module__.startswith("ipykernel.")


def progress_stream():
    """Where progress bars go, or None for nowhere.

    In a Jupyter kernel, whose streams are no terminal but redraw a line in place:
    stdout, so that each epoch's line takes the place of the finished bar, as it
    does in a terminal. In a terminal: stderr. In a file, a pipe or CI: nowhere,
    since the log would fill with the bar's frames.
    """
    if in_notebook():
        return sys.stdout
    if sys.stderr is not None and sys.stderr.isatty():  # pythonw has no stderr at all
        return sys.stderr
    return None


def progress(iterable, unit):
    """iterable with a progress bar where one belongs, erased when done."""
    stream = progress_stream()
    return tqdm(iterable, unit=unit, leave=False, file=stream, disable=stream is None)


def train_epoch(model, step, images, batch_size=128, binarize=False):
    """One pass of step over images in a random order, the last batch possibly smaller.
    With binarize, every pixel of every batch is drawn anew as 0 or 1 with its
    intensity as the probability (dynamic binarization). The order and those draws
    come from torch's global random state, as z does: seed it with torch.manual_seed
    for a run that repeats.

    Returns the reconstruction and KL terms per image, averaged over the epoch, as a
    tensor of two on the device, so the caller decides when to wait for it.
    """
    model.train()
    order = torch.randperm(len(images)).to(images.device)
    total = torch.zeros(2, device=images.device)
    for start in progress(range(0, len(images), batch_size), "batch"):
        x = images[order[start:start + batch_size]]
        total += step(torch.bernoulli(x) if binarize else x)
    return total / len(images)


@torch.no_grad()
def evaluate(model, images, batch_size=1000, recon="mse"):
    """The negative ELBO per image on images, from one sample of z per image: its
    reconstruction and KL terms as a tensor of two on the device.

    z is drawn from a generator of its own, seeded with 0 on each call: the figures
    are then a function of the weights alone, and evaluating never moves the random
    state that training draws its shuffles and z from.
    """
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    total = torch.zeros(2, device=images.device)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        mu, logvar = model.encode(x)
        x_prime = model.decode(model.reparameterize(mu, logvar, generator))
        total += torch.stack([reconstruction_loss(x_prime, x, recon), kl_divergence(mu, logvar)])
    return total / len(images)


def bound_sizes(k_max):
    """The numbers of samples the bound is taken with: 1, 10, 100, ... below k_max, and k_max."""
    return [10**p for p in range(len(str(k_max))) if 10**p < k_max] + [k_max]


@torch.no_grad()
def iwae_table(model, images, k_max=50, recon="mse", batch_size=100):
    """-L_k, the importance-weighted bound on -log p(x), per image in nats averaged
    over images, for k = 1, 10, 100, ... up to k_max samples z ~ q(z|x), each k with
    draws of its own: {k: figure}. The row k = 1 is the -ELBO; every row is an
    upper bound on -log p(x), and they fall with k towards it (Burda et al. 2015;
    Stanford CS236 prints the same table).

    z comes from a generator of its own, seeded with 0 on each call. Memory stays
    small for any k_max (iwae_bound decodes about 1024 codes at a time); time grows
    with k_max times the number of images (a progress bar shows where one belongs).
    """
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    sizes = bound_sizes(k_max)
    totals = torch.zeros(len(sizes), device=images.device)
    for start in progress(range(0, len(images), batch_size), "batch"):
        x = images[start:start + batch_size]
        totals -= torch.stack([iwae_bound(model, x, k, recon, generator).sum() for k in sizes])
    return dict(zip(sizes, (totals / len(images)).tolist()))


def bound_report(table, recon="mse", binarized=False):
    """The lines train.py prints for iwae_table's table: each -L_k in nats, as the
    table holds it, and with mse also less the decoder's constant, on the scale of
    the -ELBO lines; then the gap between the ELBO and the best bound, and what
    kind of figures they are."""
    constant = log_likelihood_constant(recon)
    lines = ["test -log p(x) bounds per image, from k samples z ~ q(z|x) each (-L_k; k = 1: the -ELBO):",
             "      k  -L_k, nats" + (f"  less {constant:.2f}, as above" if constant else "")]
    for k, figure in table.items():
        lines.append(f"  {k:5d}  {figure:10.2f}" + (f"  {figure - constant:10.2f}" if constant else ""))
    if len(table) > 1:
        best = min(table, key=table.get)
        lines += [f"-L_1 - (-L_{best}) = {table[1] - table[best]:.2f} nats: on average KL(q(z|x) || p(z|x)), what the",
                  f"encoder's Gaussian misses of the true posterior, is at least that; -log p(x) <= -L_{best}"]
    lines.append(f"(--recon mse: the -ELBO lines leave out {constant:.2f} nats of the Gaussian decoder's density)"
                 if constant else "(--recon bce on binary pixels: log-likelihoods in nats, as papers report them)"
                 if binarized else "(--recon bce on grey pixels: not a likelihood; --binarize makes it one)")
    return lines


def history_path(checkpoint):
    """The CSV of a run's figures, beside its checkpoint: vae.csv for vae.pt."""
    return os.path.splitext(checkpoint)[0] + ".csv"


def write_history(path, rows):
    """The figures of every epoch so far, one row each under a header line of
    HISTORY_COLUMNS, replacing path whole."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    writer.writerows(rows)
    write_atomically(path, lambda f: f.write(text.getvalue().encode()))


def save_checkpoint(model, path):
    """Write the state_dict, moved to the CPU so it loads anywhere, to path."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda f: torch.save(state, f))


def write_atomically(path, write):
    """Replace path with what write(f) writes to a binary file f.

    It goes to a temporary file of its own beside path (so two runs saving to one
    path never write into each other's) and then replaces path in one step, so an
    interruption leaves either the old file or the new one. Syncing the file and
    then the folder makes that step survive a power cut.
    """
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
        sync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def replace(tmp, path):
    """os.replace, tried again for up to about 3 seconds while it is refused: on
    Windows it fails while another program (a virus scanner, a cloud sync client)
    briefly holds the file it replaces."""
    for wait in (0.1, 0.2, 0.4, 0.8, 1.6):
        try:
            return os.replace(tmp, path)
        except PermissionError:
            time.sleep(wait)
    return os.replace(tmp, path)


@contextlib.contextmanager
def ctrl_c_held():
    """Hold Ctrl-C back until the block is done, then raise it. Outside the main
    thread, where Python takes no signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *args: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            raise KeyboardInterrupt


def sync_folder(folder):
    """Flush a folder's entries (a rename within it) to disk, where the OS allows:
    POSIX syncs a folder through a descriptor; Windows cannot open one."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to sync a folder; the file itself is synced
    finally:
        os.close(fd)


def check_writable(path):
    """Refuse an --out that cannot be written before any time is spent training: a
    missing folder, a name taken by a folder or a read-only file, a name like its
    own history's. Writing in the folder is tried for real: on Windows, os.access
    says nothing about folders."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path}: the folder {folder} does not exist; create it first")
    if os.path.splitext(path)[1].lower() == ".csv":
        raise ValueError(f"--out {path}: .csv names the history beside a checkpoint; use a name such as vae.pt")
    for name in (path, history_path(path)):
        if os.path.isdir(name):
            raise IsADirectoryError(f"--out {path}: {name} is a folder; give a file name such as "
                                    f"{os.path.join(path, 'vae.pt')}")
        if os.path.exists(name) and not os.access(name, os.W_OK):
            raise PermissionError(f"--out {path}: {name} is read-only; make it writable or choose another --out")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise PermissionError(f"--out {path}: the folder {folder} is not writable ({error.strerror})") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where the default is None: that
    flag's help says what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line: in a terminal with no usage block
    and exit status 2, in a notebook as a ValueError. In a notebook, --help prints
    the help and parse_args returns None: no SystemExit, which IPython shows with a
    warning to use exit()."""

    def error(self, message):
        message = f"{self.prog}: error: {message} (see --help)"
        if in_notebook():
            raise ValueError(message)
        self.exit(2, message + "\n")

    def parse_args(self, args=None, namespace=None):
        if isinstance(args, str):
            self.error(f"give the flags as a list, such as {args.split()}")
        try:
            return super().parse_args(args, namespace)
        except SystemExit as stop:
            if stop.code == 0 and in_notebook():
                return None
            raise


def say(*lines):
    """Print lines on stdout at once. A reader that has gone (`| head`) raises
    BrokenPipeError on every OS: Windows reports it as OSError EINVAL."""
    try:
        print(*lines, sep="\n", flush=True)
    except OSError as error:
        if isinstance(error, BrokenPipeError) or error.errno == errno.EINVAL:
            raise BrokenPipeError(errno.EPIPE, "stdout was closed") from None
        raise


def silence_stdout():
    """After the reader of stdout has gone (`| head`), point stdout at the null
    device, so that Python's last flush on exit cannot fail with a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def checked(convert, test, wanted):
    """An argparse type: convert the text, then reject it unless test(value)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    return parse


positive_int = checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a positive finite number")
non_negative_float = checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
seed_int = checked(int, lambda v: 0 <= v < 2**64, "an integer from 0 to 2**64 - 1, as torch takes")


def parse_args(argv=()):
    p = ArgumentParser(prog="train.py", description="Train the MNIST VAE and save its state_dict.",
                       formatter_class=HelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="N", help="images per Adam step")
    p.add_argument("--lr", type=positive_float, default=1e-3, metavar="LR", help="Adam learning rate")
    p.add_argument("--z-dims", type=positive_int, default=4, metavar="N", help="latent dimensions")
    p.add_argument("--hidden", type=positive_int, default=128, metavar="N", help="units in each hidden layer")
    p.add_argument("--beta", type=non_negative_float, default=1.0, metavar="B",
                   help="weight of the KL term: 1 is the true ELBO, 0 a plain autoencoder")
    p.add_argument("--recon", choices=("mse", "bce"), default="mse",
                   help="reconstruction term: squared error (Gaussian) or cross-entropy (Bernoulli)")
    p.add_argument("--binarize", action="store_true",
                   help="train on pixels drawn anew as 0 or 1 each time an image is used, and test on the "
                        "test set binarized once from a fixed seed (with --recon bce: true nats)")
    p.add_argument("--iwae", type=non_negative_int, default=50, metavar="K",
                   help="after training, bound -log p(x) on the test set with k = 1, 10, ... up to K "
                        "samples per image; 0 skips it")
    p.add_argument("--seed", type=seed_int, default=0, metavar="N",
                   help="seed for the weights, the shuffles, z and binary pixels (torch.manual_seed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to train; auto takes cuda, then mps, then cpu")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads (default: half the CPUs, 1 to 4, so that a busy machine slows training "
                        "down little)")
    p.add_argument("--data-dir", default="data", metavar="DIR",
                   help="folder holding MNIST/raw (downloaded there if missing)")
    p.add_argument("--out", default="vae.pt", metavar="PATH",
                   help="checkpoint, rewritten after every epoch, with the history beside it (vae.csv)")
    return p.parse_args(argv if isinstance(argv, str) else list(argv or ()))


def train(args):
    """Train as args say, saving the checkpoint and its history after every epoch,
    then print the bound table; returns the trained model.

    Ctrl-C and a closed stdout stop it with a message that says what was saved; in
    a notebook, Ctrl-C returns the model as trained so far.
    """
    history = history_path(args.out)
    model, rows, saved, where = None, [], 0, "before training began"

    def kept():
        return f"{args.out} and {history} hold epoch {saved}" if saved else f"nothing was saved to {args.out}"

    def stopped(what):
        return f"{what} {where}; {kept()}"

    threads_before = torch.get_num_threads()
    try:
        device = pick_device(args.device)
        check_writable(args.out)
        torch.set_num_threads(args.threads or default_threads())
        n = torch.get_num_threads()
        say(f"device: {device}" + (f" ({n} thread{'' if n == 1 else 's'})" if device.type == "cpu" else ""))
        train_images, _ = load_mnist(args.data_dir, train=True, device=device)
        test_images, _ = load_mnist(args.data_dir, train=False, device=device)
        if args.binarize:
            test_images = binarize_once(test_images)

        torch.manual_seed(args.seed)
        model = VAE(z_dims=args.z_dims, num_hidden=args.hidden).to(device)
        optimizer = make_optimizer(model, args.lr)
        step = make_step(model, optimizer, args.beta, args.recon)
        if device.type == "cuda":  # buffer for the batches that occur: never more than all the images
            step = CUDAGraphStep(step, (min(args.batch_size, len(train_images)), model.input_size))

        for epoch in range(1, args.epochs + 1):
            where = f"in epoch {epoch}"
            start = time.perf_counter()
            train_terms = train_epoch(model, step, train_images, args.batch_size, args.binarize)
            test_terms = evaluate(model, test_images, recon=args.recon)
            train_recon, train_kl, test_recon, test_kl = torch.cat([train_terms, test_terms]).tolist()
            seconds = time.perf_counter() - start
            figures = {"train reconstruction": train_recon, "train KL": train_kl,
                       "test reconstruction": test_recon, "test KL": test_kl}
            for name, value in figures.items():
                if not math.isfinite(value):
                    raise FloatingPointError(f"the {name} became {value} {where}; {kept()}. "
                                             f"Try a lower --lr than {args.lr:g}")
            train_loss = train_recon + args.beta * train_kl
            row = dict(epoch=epoch, train_loss=train_loss, train_recon=train_recon, train_kl=train_kl,
                       test_nelbo=test_recon + test_kl, test_recon=test_recon, test_kl=test_kl, seconds=seconds,
                       nats_left_out=log_likelihood_constant(args.recon), binarized=int(args.binarize))
            rows.append([round(row[name], 4) for name in HISTORY_COLUMNS])
            with ctrl_c_held():  # so that the checkpoint and its history always hold the same epoch
                save_checkpoint(model, args.out)
                write_history(history, rows)
                saved = epoch
            train_part = (f"train -ELBO {train_loss:.2f} (recon {train_recon:.2f} + KL {train_kl:.2f})"
                          if args.beta == 1 else
                          f"train loss {train_loss:.2f} (recon {train_recon:.2f} + {args.beta:g} x KL {train_kl:.2f})")
            say(f"epoch {epoch}/{args.epochs}  {train_part}  "
                f"test -ELBO {test_recon + test_kl:.2f} (recon {test_recon:.2f} + KL {test_kl:.2f})  {seconds:.2f}s")
        say(f"saved {args.out} and {history}")
        if args.iwae:
            where = "while bounding log p(x)"
            say("", *bound_report(iwae_table(model, test_images, args.iwae, args.recon), args.recon, args.binarize))
    except KeyboardInterrupt:
        if not in_notebook():
            raise KeyboardInterrupt(stopped("interrupted")) from None
        returning = "; returning the model as it is now" if model is not None else ""
        print(f"train.py: {stopped('interrupted')}{returning}", file=sys.stderr)
    except BrokenPipeError:
        raise BrokenPipeError(stopped("output closed")) from None
    except OSError as error:
        if not saved:
            raise
        raise OSError(f"{error} {where}; {kept()}") from None
    finally:
        torch.set_num_threads(threads_before)
    return model


def main(argv=()):
    """The command line, its flags as a list, callable from a notebook too:
    train.main(["--epochs", "3"]) returns the trained model; train.main() trains
    with the defaults. A user's error ends in one line: in a terminal, on stderr
    with a non-zero exit status; in a notebook, as an exception that carries it."""
    args = parse_args(argv)
    if args is None:  # --help in a notebook
        return None
    try:
        return train(args)
    except BrokenPipeError as closed:
        silence_stdout()
        sys.exit(f"train.py: {closed}")
    except (ValueError, OSError, FloatingPointError) as error:
        if in_notebook():
            raise
        sys.exit(f"train.py: error: {error}")
    except KeyboardInterrupt as stop:
        print(f"\ntrain.py: {stop}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
