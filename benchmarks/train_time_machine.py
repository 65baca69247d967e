"""The deep-RNN chapter of *Dive into Deep Learning*, reproduced with fusedrnn.

A character-level language model on H. G. Wells' *The Time Machine*, trained
with the chapter's protocol: letters and spaces only, lower-cased, a vocabulary
of 28 (26 letters, space, <unk>), the first 10,000 tokens, minibatches of 32
sequences of 35 steps taken by sequential partitioning (the state is carried
from one minibatch to the next and detached), one-hot inputs, a 2-layer LSTM
with 256 hidden units and a linear output layer, SGD with learning rate 2,
gradient-norm clipping at 1, 500 epochs.  It reports perplexity and tokens per
second as the book does and generates 50 characters after two prefixes.

    python benchmarks/train_time_machine.py                 # fusedrnn, LSTM
    python benchmarks/train_time_machine.py --compare       # fusedrnn and torch.nn side by side
    python benchmarks/train_time_machine.py --impl torch --cell gru
    torchrun --nproc_per_node 2 benchmarks/train_time_machine.py --epochs 50   # DDP

Under torchrun each process takes an equal share of every minibatch's rows
(gloo on the CPU, NCCL on GPUs); DistributedDataParallel averages the
gradients, so every replica takes the same step a single process would.
"""
import argparse
import collections
import hashlib
import json
import math
import os
import random
import re
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_TEXT = os.path.join(HERE, "data", "timemachine.txt")
DEFAULT_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"


# -------------------------------------------------------------------- data --

def read_text(path=DEFAULT_TEXT, check_sha1=True):
    """The book's lines reduced to lower-case letters and single spaces."""
    with open(path, "rb") as f:
        raw = f.read()
    if check_sha1 and os.path.abspath(path) == os.path.abspath(DEFAULT_TEXT):
        digest = hashlib.sha1(raw).hexdigest()
        if digest != DEFAULT_SHA1:
            raise ValueError(f"{path}: sha1 {digest} is not the expected {DEFAULT_SHA1}; "
                             "the shipped copy of The Time Machine was modified")
    lines = raw.decode("utf-8").splitlines()
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]


class Vocab:
    """Characters indexed by falling frequency (ties: first seen first), <unk> at 0."""

    def __init__(self, tokens):
        counts = collections.Counter(tokens)
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
        self.idx_to_token = ["<unk>"] + [tok for tok, _ in ordered if tok != "<unk>"]
        self.token_to_idx = {tok: i for i, tok in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, token):
        return self.token_to_idx.get(token, 0)

    def to_tokens(self, indices):
        return "".join(self.idx_to_token[int(i)] for i in indices)


def load_corpus(path=DEFAULT_TEXT, max_tokens=10000):
    """(corpus as a list of token indices, vocab).  max_tokens <= 0 keeps the whole text."""
    tokens = [ch for line in read_text(path) for ch in line]
    vocab = Vocab(tokens)
    corpus = [vocab[ch] for ch in tokens]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def sequential_batches(corpus, batch_size, num_steps, rng):
    """Sequential partitioning: minibatch k+1 continues each row of minibatch k.

    A random offset in [0, num_steps] starts the epoch; the corpus is cut into
    batch_size contiguous streams read num_steps at a time.  Yields (X, Y) of
    shape (batch_size, num_steps), Y being X shifted by one token.
    """
    offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    xs = torch.tensor(corpus[offset:offset + num_tokens]).reshape(batch_size, -1)
    ys = torch.tensor(corpus[offset + 1:offset + 1 + num_tokens]).reshape(batch_size, -1)
    for i in range(0, (xs.shape[1] // num_steps) * num_steps, num_steps):
        yield xs[:, i:i + num_steps], ys[:, i:i + num_steps]


# ------------------------------------------------------------------- model --

def make_rnn(cell, impl, vocab_size, hidden_size, num_layers):
    if impl == "torch":
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        return cls(vocab_size, hidden_size, num_layers)
    import fusedrnn
    if not hasattr(fusedrnn, cell.upper()):
        raise SystemExit(f"fusedrnn has no {cell.upper()} yet; run --impl torch for --cell {cell}")
    return getattr(fusedrnn, cell.upper())(vocab_size, hidden_size, num_layers)


class CharModel(nn.Module):
    """One-hot characters -> stacked RNN -> linear layer over the vocabulary."""

    def __init__(self, rnn, vocab_size):
        super().__init__()
        self.rnn = rnn
        self.vocab_size = vocab_size
        self.is_lstm = isinstance(rnn, nn.LSTM)
        self.dense = nn.Linear(rnn.hidden_size, vocab_size)

    def begin_state(self, batch_size, device):
        shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros(shape, device=device)) if self.is_lstm else h

    def forward(self, tokens, state):
        x = F.one_hot(tokens.T.long(), self.vocab_size).float()  # (T, B, V)
        y, state = self.rnn(x, state)
        return self.dense(y.reshape(-1, y.shape[-1])), state


def detach_state(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def clip_gradients(params, theta):
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    if norm > theta:
        for p in params:
            p.grad.mul_(theta / norm)


@torch.no_grad()
def predict(prefix, num_preds, model, vocab, device):
    state = model.begin_state(1, device)
    out = [vocab[prefix[0]]]
    for ch in prefix[1:]:
        _, state = model(torch.tensor([[out[-1]]], device=device), state)
        out.append(vocab[ch])
    for _ in range(num_preds):
        y, state = model(torch.tensor([[out[-1]]], device=device), state)
        out.append(int(y.argmax(dim=1).reshape(1)))
    return vocab.to_tokens(out)


@torch.no_grad()
def heldout_perplexity(model, corpus, batch_size, num_steps, device):
    model.eval()
    state, total, n = None, 0.0, 0
    for x, y in sequential_batches(corpus, batch_size, num_steps, random.Random(0)):
        if state is None:
            state = model.begin_state(x.shape[0], device)
        y_hat, state = model(x.to(device), state)
        total += F.cross_entropy(y_hat, y.T.reshape(-1).to(device), reduction="sum").item()
        n += y.numel()
    model.train()
    return math.exp(total / max(n, 1))


# ---------------------------------------------------------------- training --

def dist_info():
    """(rank, world_size) under torchrun, else (0, 1)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


class Run:
    """One model in training: its data order, optimiser and history."""

    def __init__(self, args, impl, device, init_state=None):
        self.args, self.impl, self.device = args, impl, device
        self.rank, self.world = dist_info()
        torch.manual_seed(args.seed)
        corpus, self.vocab = load_corpus(args.data, 0 if args.full_text else args.max_tokens)
        self.held = None
        if args.full_text:
            split = int(len(corpus) * 0.9)
            corpus, self.held = corpus[:split], corpus[split:]
        self.corpus = corpus
        if args.batch_size % self.world:
            raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the "
                             f"{self.world} processes")
        self.rows = slice(self.rank * args.batch_size // self.world,
                          (self.rank + 1) * args.batch_size // self.world)
        self.model = CharModel(make_rnn(args.cell, impl, len(self.vocab), args.hidden,
                                        args.layers), len(self.vocab))
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.model.to(device)
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.SGD(self.params, lr=args.lr)
        self.rng = random.Random(args.seed)  # same batches for every implementation
        self.history, self.speeds = [], []
        self.tokens, self.seconds = 0, 0.0

    def epoch(self):
        """One pass over the corpus; returns (perplexity, tokens/s) of the epoch."""
        args, device, model = self.args, self.device, self.model
        state, total, n = None, 0.0, 0
        t0 = time.perf_counter()
        for x, y in sequential_batches(self.corpus, args.batch_size, args.steps, self.rng):
            x, y = x[self.rows].to(device), y[self.rows].to(device)
            state = model.begin_state(x.shape[0], device) if state is None else detach_state(state)
            y_hat, state = self.net(x, state)
            loss = F.cross_entropy(y_hat, y.T.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(self.params, args.clip)
            self.opt.step()
            total += loss.item() * y.numel()
            n += y.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if self.world > 1:  # global loss and token count, as one process would see them
            agg = torch.tensor([total, float(n)], dtype=torch.float64)
            torch.distributed.all_reduce(agg)
            total, n = agg.tolist()
        ppl = math.exp(total / n)
        self.history.append(ppl)
        self.speeds.append(n / dt)
        self.tokens += n
        self.seconds += dt
        return ppl, n / dt

    def result(self):
        ppl = self.history[-1] if self.history else float("nan")
        res = {
            "impl": self.impl, "cell": self.args.cell, "epochs": len(self.history),
            "perplexity": ppl, "final_loss": math.log(ppl),
            # As the book reports it: the speed of the last epoch.
            "tokens_per_sec": self.speeds[-1] if self.speeds else 0.0,
            # Steadier: all tokens over all training time (excludes text generation).
            "tokens_per_sec_mean": self.tokens / self.seconds if self.seconds else 0.0,
            "train_seconds": self.seconds, "world_size": self.world, "history": self.history,
            "samples": {p: predict(p, 50, self.model, self.vocab, self.device)
                        for p in ("time traveller", "traveller")},
        }
        if self.held is not None:
            res["heldout_perplexity"] = heldout_perplexity(
                self.model, self.held, self.args.batch_size, self.args.steps, self.device)
        return res


def train_many(args, impls, device, init_state=None, log=lambda *a: print(*a, flush=True)):
    """Trains one model per implementation, epochs interleaved (A, B, A, B, ...) so
    that a busy machine slows them alike; returns [(result, model)]."""
    runs = [Run(args, impl, device, init_state) for impl in impls]
    for epoch in range(args.epochs):
        for run in runs:
            ppl, speed = run.epoch()
            if run.rank == 0 and ((epoch + 1) % args.log_every == 0 or epoch + 1 == args.epochs):
                log(f"  [{run.impl}] epoch {epoch + 1:4d}/{args.epochs}  perplexity {ppl:7.3f}  "
                    f"{speed:10.1f} tokens/sec  ({run.seconds:6.1f} s training)")
    return [(run.result(), run.model) for run in runs]


def train(args, impl, device, init_state=None, log=lambda *a: print(*a, flush=True)):
    """Trains one model; returns (result dict, model)."""
    return train_many(args, [impl], device, init_state, log)[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    p.add_argument("--impl", choices=["fusedrnn", "torch"], default="fusedrnn")
    p.add_argument("--compare", action="store_true",
                   help="train fusedrnn and torch.nn from the same weights and seed, side by side")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=10000)
    p.add_argument("--full-text", action="store_true",
                   help="the whole book, 90%% for training, 10%% held out (held-out perplexity)")
    p.add_argument("--data", default=DEFAULT_TEXT, help="a text file (default: The Time Machine)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--save-params", default=None,
                   help="torch.save the trained parameters here (under torchrun: PATH.rankN)")
    return p.parse_args(argv)


def pick_device(name, rank):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return dev


def main(argv=None):
    args = parse_args(argv)
    rank, world = dist_info()
    device = pick_device(args.device, rank)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    say = (lambda *a, **k: print(*a, **k, flush=True)) if rank == 0 else (lambda *a, **k: None)
    impls = ["fusedrnn", "torch"] if args.compare else [args.impl]
    say(f"The Time Machine, {args.cell.upper()} {args.layers}x{args.hidden}, batch {args.batch_size}, "
        f"{args.steps} steps, lr {args.lr}, {args.epochs} epochs, on {device}"
        + (f", {world} processes" if world > 1 else ""))
    init = None
    if args.compare:  # both start from the same weights
        torch.manual_seed(args.seed)
        _, vocab = load_corpus(args.data, args.max_tokens)
        init = CharModel(make_rnn(args.cell, "torch", len(vocab), args.hidden, args.layers),
                         len(vocab)).state_dict()
    results = []
    for (res, model), impl in zip(train_many(args, impls, device, init_state=init, log=say), impls):
        results.append(res)
        if args.save_params:
            path = args.save_params if world == 1 else f"{args.save_params}.rank{rank}"
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       path if len(impls) == 1 else f"{path}.{impl}")
        say(f"{impl}: perplexity {res['perplexity']:.1f}, {res['tokens_per_sec']:.1f} tokens/sec "
            f"on {device} (mean over all epochs {res['tokens_per_sec_mean']:.1f})")
        if "heldout_perplexity" in res:
            say(f"{impl}: held-out perplexity {res['heldout_perplexity']:.2f}")
        for text in res["samples"].values():
            say(text)
    if args.compare and rank == 0:
        a, b = results
        say(f"\n{'impl':10s} {'perplexity':>10s} {'tokens/s':>12s} {'mean tokens/s':>14s}\n"
            + "\n".join(f"{r['impl']:10s} {r['perplexity']:10.3f} {r['tokens_per_sec']:12.1f} "
                        f"{r['tokens_per_sec_mean']:14.1f}" for r in results)
            + f"\nfusedrnn / torch tokens/s (mean over all epochs, epochs interleaved): "
              f"{a['tokens_per_sec_mean'] / b['tokens_per_sec_mean']:.2f}x")
    if args.json:
        path = args.json if world == 1 else f"{args.json}.rank{rank}"
        with open(path, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d"), "args": vars(args),
                       "results": results, "rank": rank}, f, indent=1)
    if world > 1:
        torch.distributed.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
