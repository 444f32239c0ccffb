"""Issue #24 item 2: scoring hooks act only on the scoring call's own thread. A plain
``model(x)`` in another thread during scoring sees the unmodified model, and two concurrent
scorers on one model both get the single-thread answer."""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from captum_gndi import LayerGNDI, compute_gndi


class Pause(nn.Module):
    """Releases the GIL inside the forward pass, so that threads interleave mid-pass."""

    def forward(self, h):
        time.sleep(0.0005)
        return h


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), Pause(), nn.Linear(8, 8), nn.Tanh(), Pause(), nn.Linear(8, 3)
    ).eval()


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))


def run_threads(*targets):
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_a_plain_call_in_another_thread_sees_the_unmodified_model():
    model = make_model()
    with torch.no_grad():
        clean = model(X)
    done = threading.Event()
    wrong, calls = [], [0]

    def score():
        try:
            for mode in ("forward", "reverse") * 10:
                LayerGNDI(model, [model[0], model[3]]).attribute(X, mode=mode)
        finally:
            done.set()

    def plain():
        while not done.is_set():
            with torch.no_grad():
                output = model(X)
            calls[0] += 1
            if not torch.equal(output, clean):
                wrong.append(output)

    run_threads(score, plain)
    assert calls[0] > 20  # the calls really overlapped the scoring
    assert wrong == []


def test_two_concurrent_scorers_both_get_the_single_thread_answer():
    model = make_model()
    layers = [model[0], model[3]]
    expected = {
        mode: LayerGNDI(model, layers).attribute(X, target=1, mode=mode, granularity="channel")
        for mode in ("forward", "reverse")
    }
    results = {"forward": [], "reverse": []}

    def scorer(mode):
        def run():
            for _ in range(10):
                scores = LayerGNDI(model, layers).attribute(
                    X, target=1, mode=mode, granularity="channel"
                )
                results[mode].append(scores)

        return run

    run_threads(scorer("forward"), scorer("reverse"), scorer("forward"), scorer("reverse"))
    for mode, runs in results.items():
        assert len(runs) == 20
        for scores in runs:
            for got, want in zip(scores, expected[mode]):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
    reference = compute_gndi(model, [X, X], ["0", "3"], progress=False).mean
    totals = []
    run_threads(
        *[lambda: totals.append(compute_gndi(model, [X, X], ["0", "3"], progress=False))] * 3
    )
    for result in totals:
        for name in ("0", "3"):
            torch.testing.assert_close(result.mean[name], reference[name], rtol=0, atol=0)
