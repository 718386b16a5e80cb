"""Continuous batching: every request in flight shares one U-Net call per step.

A public Space gets many requests at once, and a U-Net call on a few more rows costs little more than on a few
(on a GPU, about the same for 16 rows as for 1,000). Each request runs its own reverse loop, in its own thread,
exactly as it runs alone: its sampler, step count, guidance, context and seeded noise stay its own, and so does
everything between U-Net calls (the update formula, scheduler state, frames). Only the U-Net call is shared: a
request hands its rows (the unconditional twin included, with guidance) to the batcher and waits; the batcher
thread merges whatever rows are waiting into one call, with one timestep per row, and hands each request its
slice back. A request joins at its next step and leaves after its last, as LLM servers batch tokens, so nobody
waits for another request to finish.

Why our own and not a library's: diffusers pipelines batch one request's images, not requests in flight, and
serving frameworks batch whole calls, not the steps inside a streaming generator.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

MAX_ROWS_PER_STEP = 64  # U-Net rows per merged call: 4 of the page's default requests (16 sprites, one pass)
BUCKETS = (16, 32, 64)  # row counts to compile for: merged calls are padded up to the next one
MAX_ROWS_IN_FLIGHT = 64 * 128  # 64 requests of the largest size (64 sprites, guided): 25 MB per 16x16 row tensor
GATHER_S = 0.05  # longest wait, after the first row arrives, for the other requests in flight to reach their step


class Busy(RuntimeError):
    """More rows in flight than the batcher admits; try again shortly."""


@dataclass(eq=False)
class Ticket:
    """One request in flight."""

    rows: int  # U-Net rows per step
    order: int  # arrival order
    steps_done: int = 0
    waiting: bool = False  # has a call in the queue


@dataclass(eq=False)
class Call:
    """One U-Net call of one request, waiting to be merged."""

    ticket: Ticket
    sample: torch.Tensor
    timestep: torch.Tensor  # (rows,), float: the merged call takes one timestep per row
    context: torch.Tensor
    done: threading.Event = field(default_factory=threading.Event)
    output: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return self.sample.shape[0]


class ContinuousBatcher:
    """Merges the U-Net calls of every request in flight on one pipeline (``SpritePipeline.enable_batching``).

    max_rows_per_step: rows per merged call; requests beyond it wait for the next call. A request's first step
        goes first (so every request streams its first frame soon), then the oldest requests (so they finish).
    max_rows_in_flight: admitted rows; :meth:`stream` raises :class:`Busy` beyond it.
    buckets: returns the row counts the predictor is compiled for; a merged call is padded up to the next one.
        Read at each call (enable_batching passes the pipeline's ``compiled_batch_sizes``), so a compile that
        ends later is used at once.
    """

    def __init__(self, predictor: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 max_rows_per_step: int = MAX_ROWS_PER_STEP, max_rows_in_flight: int = MAX_ROWS_IN_FLIGHT,
                 buckets: Callable[[], tuple[int, ...]] = tuple, gather_s: float = GATHER_S):
        self.predictor, self.buckets, self.gather_s = predictor, buckets, gather_s
        self.max_rows_per_step, self.max_rows_in_flight = max_rows_per_step, max_rows_in_flight
        self.tickets: set[Ticket] = set()
        self.queue: list[Call] = []
        self.condition = threading.Condition()
        self.arrivals = itertools.count()
        self.local = threading.local()  # the ticket of the request this thread is stepping
        self.merged: deque[tuple[int, ...]] = deque(maxlen=1000)  # rows of each request in each recent merged call
        self.thread: threading.Thread | None = None

    # ---- the requests' side ------------------------------------------------------------------------
    @property
    def rows_in_flight(self) -> int:
        with self.condition:
            return sum(t.rows for t in self.tickets)

    def stream(self, steps: Iterator, rows: int) -> Iterator:
        """A request's steps, with its U-Net calls merged into others'. It is admitted at its first step (a full
        batcher raises :class:`Busy` there) and leaves when done, failed or closed (a client that went away)."""
        with self.condition:
            if sum(t.rows for t in self.tickets) + rows > self.max_rows_in_flight:
                steps.close()
                raise Busy(f"the server is busy ({len(self.tickets)} requests sampling); try again in a moment")
            ticket = Ticket(rows, next(self.arrivals))
            self.tickets.add(ticket)
        try:
            while True:
                self.local.ticket = ticket  # each next() may run on another thread (gradio's worker pool)
                try:
                    step = next(steps)
                except StopIteration:
                    return
                finally:
                    self.local.ticket = None
                yield step
        finally:
            steps.close()
            with self.condition:
                self.tickets.discard(ticket)
                self.condition.notify_all()

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The U-Net's output for these rows, computed in a merged call; blocks until it is ready. ``timestep``
        has one float per row (SpritePipeline.predict_noise makes it so), as the merged call takes them."""
        ticket = getattr(self.local, "ticket", None)
        if ticket is None:  # a caller outside stream(): batched all the same, without a place in the queue order
            ticket = Ticket(sample.shape[0], next(self.arrivals))
        call = Call(ticket, sample, timestep, context)
        with self.condition:
            self._start()
            ticket.waiting = True
            self.queue.append(call)
            self.condition.notify_all()
        call.done.wait()
        ticket.steps_done += 1
        if call.error is not None:
            raise call.error
        return call.output

    # ---- the batcher's side -------------------------------------------------------------------------
    def _start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.condition:
                while not self.queue:
                    self.condition.wait()
                # A step boundary: unless the queue already fills a call, wait (briefly) until every request in
                # flight has its next call queued. A full call starts at once: the requests it leaves out update
                # their samples and render their frames while it runs.
                deadline = time.monotonic() + self.gather_s
                while (sum(c.rows for c in self.queue) < self.max_rows_per_step
                       and any(not t.waiting for t in self.tickets) and time.monotonic() < deadline):
                    self.condition.wait(max(0.0, deadline - time.monotonic()))
                chosen = self._choose()
                for call in chosen:
                    self.queue.remove(call)
                    call.ticket.waiting = False
            self._run(chosen)

    def _choose(self) -> list[Call]:
        """First steps first (a frame for everyone soon), then the oldest requests, up to the row cap."""
        chosen, rows = [], 0
        for call in sorted(self.queue, key=lambda c: (c.ticket.steps_done > 0, c.ticket.order)):
            if chosen and rows + call.rows > self.max_rows_per_step:
                continue  # a smaller call further back may still fit
            chosen.append(call)
            rows += call.rows
        return chosen

    def _run(self, calls: list[Call]) -> None:
        """One U-Net call for all ``calls`` (padded to a compiled size); if it fails, each alone, so an error
        stays with the request that caused it."""
        self.merged.append(tuple(c.rows for c in calls))
        try:
            outputs = self._forward(calls)
        except Exception:  # noqa: BLE001 -- retried one by one below, where each error reaches its own request
            outputs = None
        for index, call in enumerate(calls):
            try:
                call.output = outputs[index] if outputs is not None else self._forward([call])[0]
            except Exception as err:  # noqa: BLE001 -- raised in the request's own thread
                call.error = err
            call.done.set()

    def _forward(self, calls: list[Call]) -> list[torch.Tensor]:
        rows = sum(c.rows for c in calls)
        padded = min((b for b in self.buckets() if b >= rows), default=rows)
        sample = torch.cat([c.sample for c in calls])
        timestep = torch.cat([c.timestep for c in calls])
        context = torch.cat([c.context for c in calls])
        if padded > rows:  # zero rows, dropped after the call: a compiled shape beats an eager exact one
            extra = padded - rows
            sample = torch.cat([sample, sample.new_zeros(extra, *sample.shape[1:])])
            timestep = torch.cat([timestep, timestep.new_zeros(extra)])
            context = torch.cat([context, context.new_zeros(extra, *context.shape[1:])])
        with torch.inference_mode():
            output = self.predictor(sample, timestep, context)
        return list(output[:rows].split([c.rows for c in calls]))
