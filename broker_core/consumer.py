"""The consumer loop: claim events, run their handlers, settle the outcome.

One consumer per broker. Its claim loop keeps a local buffer of claimed events filled
ahead of the handlers (``prefetch``, as far as the handlers keep up, see
:meth:`Consumer._claim_loop`); ``concurrency`` runner tasks take the events from it one
at a time, and settle each delivery: success is acked (acks from many handlers travel
together in one call), failure is retried by the handler's retry policy or
dead-lettered, an undecodable body is dead-lettered at once. One renewal task extends
the leases of all running and buffered deliveries in one call per period, so a slow
handler keeps its event while its process lives, and a crashed process's leases simply
expire.

An event whose previous lease expired (``Message.isolated``) may be what crashed its
last consumer: it runs alone, after the handlers already running have finished and with
no other claim meanwhile, so that a crash it causes again charges no other event an
attempt. Events given back because the consumer stops (buffered ones at once, those
whose handlers outlived the grace period after it) are released with their attempt
uncounted.

A buffered event starts on its lease only while at least half of it is left; with less
(renewals fell behind) it is renewed first, and not started if that fails.

Failures of the transport follow one rule everywhere: the consumer never dies of them.
A :class:`~broker_core.errors.TransportError` is an outage and is logged as a warning
with its message; any other exception is a bug of the transport and is logged as an
error with its traceback. Either way a failed claim or wait is tried again after a
pause, and an event whose ack, retry, renewal or release failed returns to the group
when its lease expires. A batch call answered with a count of results other than one
per receipt is such a bug, and is handled as a failed call.

The lifecycle hooks (:mod:`broker_core.hooks`) are called at the points of this loop
their docstrings name; a hook nobody implements is skipped with one ``is None`` test.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from broker_core.cancellation import cancel_and_wait, to_the_end
from broker_core.codec import DecodeError, decode
from broker_core.delivery import Delivery
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_core.handlers import Router
from broker_core.hooks import ACKED, Outcome, OutcomeKind
from broker_core.lifecycle import Lifecycle
from broker_core.retry import RetryPolicy
from broker_core.settings import BrokerOptions
from broker_core.text import safe_text
from broker_core.transport import Message, Receipt, Transport, checked_results

__all__ = ["Consumer"]

log = logging.getLogger("broker.consumer")

_TRANSPORT_RETRY_DELAY = 0.5
"""Seconds to wait before claiming again after the transport failed."""

_GIVE_BACK_TIMEOUT = 5.0
"""Longest wait, when stopping, for the events not handled to be given back; past it
(the store is unreachable) they return to the group when their leases expire."""


_HANDLER_CANCELLED_AGAIN_AFTER = 1.0
"""Seconds a handler cancelled by the shutdown has before it is cancelled again (its own
call may have lost the first cancellation): what it does on a cancellation (a rollback,
a lock released over the network) gets that long, its lease still renewed."""

_START_MARGIN = 0.5
"""A buffered event starts on its lease as it stands only with this fraction of a lease
left. Renewals every third of a lease keep more than that; less means they fell behind,
and the lease is renewed first (or the event not started)."""

_RELEASED = Outcome(OutcomeKind.RELEASED)
_LEASE_LOST = Outcome(OutcomeKind.LEASE_LOST)


def _log_failure(what: str, exc: BaseException, then: str) -> None:
    """Log a failed transport call by the one rule of the module docstring.

    ``then`` says what happens next, e.g. "retrying in 0.5s".
    """
    if isinstance(exc, TransportError):
        log.warning("%s failed; %s: %s", what, then, exc)
    else:
        log.error(
            "%s failed with an unexpected error (a bug in the transport?); %s",
            what,
            then,
            exc_info=exc,
        )


def _settling_failed(message: Message, exc: Exception) -> None:
    _log_failure(
        f"settling event {message.event_id} ({message.topic}/{message.group})",
        exc,
        "it returns when its lease expires",
    )


def _describe(exc: BaseException) -> str:
    """``Type: message`` of a handler's exception, as text any store can hold."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ fails still gets recorded
        message = "<unprintable>"
    return safe_text(f"{type(exc).__name__}: {message}")


@dataclass
class _Run:
    """What one :meth:`Consumer.run` holds while it lasts."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a handler finished (or a stop came): the claim loop may claim again."""
    idle: deque[asyncio.Future[None]] = field(default_factory=deque)
    """One future per idle runner: resolved to wake it (for new events, or the stop)."""
    acks_queued: asyncio.Event = field(default_factory=asyncio.Event)
    acks_answered: asyncio.Event = field(default_factory=asyncio.Event)
    buffer: deque[Message] = field(default_factory=deque)
    """Claimed events no runner has taken yet, in claim order."""
    runners: set[asyncio.Task[None]] = field(default_factory=set)
    busy: dict[asyncio.Task[None], Receipt] = field(default_factory=dict)
    """The event each runner is handling now."""
    cancelled: list[Receipt] = field(default_factory=list)
    """Events whose handlers were cancelled by the shutdown: to be given back."""
    finished: int = 0
    """Deliveries the runners finished, for the claim loop's pace."""
    claim_at: int = -1
    """Events held (buffered and running) at which the waiting claim loop claims again."""
    claim_epoch: int = 0
    """Counts the settings of ``claim_at``: a runner yields to the claim loop once each."""
    isolated: Receipt | None = None
    """The isolated event claimed and not yet finished; no claim is made meanwhile."""
    waiting: asyncio.Future[bool] | None = None
    aborted: bool = False
    acks_closing: bool = False


class Consumer:
    """Runs a group's handlers over a transport; used through :class:`~broker_core.Broker`."""

    def __init__(
        self,
        transport: Transport,
        group: str,
        router: Router,
        options: BrokerOptions,
        hooks: Lifecycle,
    ) -> None:
        self._transport = transport
        self._group = group
        self._router = router
        self._options = options
        self._hooks = hooks
        self._run: _Run | None = None
        # Deliveries whose leases are renewed: running, or handled and waiting for the ack.
        self._deliveries: dict[Receipt, Delivery[Event]] = {}
        # Claimed events in the buffer, by receipt: when their lease surely ends unless
        # renewed (monotonic). Renewed with the running ones; one whose renewal is refused
        # is dropped when a runner comes to it.
        self._held: dict[Receipt, float] = {}
        self._acks: list[Receipt] = []
        # Receipts whose ack is queued or on the wire: the ack's answer, not a renewal's,
        # says whether their lease was lost.
        self._acking: set[Receipt] = set()
        self._renewers = 0
        self._renewal: asyncio.Task[None] | None = None
        self._rotation = 0

    # -- public --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is in progress."""
        return self._run is not None

    async def pick(self, topics: list[str]) -> bool:
        """Claim at most one event of ``topics``, handle and settle it; False if none.

        A failing claim raises, as it does for any direct call to the transport. Refused
        while :meth:`run` is in progress, whose claims it would bypass (an event that
        must run alone would not).
        """
        if self._run is not None:
            raise RuntimeError("pick() while this broker's run() is in progress")
        claimed_at = time.monotonic()
        messages = await self._claim(topics, 1)
        if not messages:
            return False
        async with self._renewing():
            try:
                await self._process(messages[0], claimed_at + self._options.lease)
            except asyncio.CancelledError:
                await self._give_back([messages[0].receipt])
                raise
            await self._flush_acks()
        return True

    async def run(self, topics: list[str]) -> None:
        """Consume ``topics`` until :meth:`stop`, :meth:`abort` or cancellation."""
        if self._run is not None:
            raise RuntimeError("this broker is already running")
        run = self._run = _Run()
        acker = asyncio.create_task(self._ack_loop(run), name="broker-acks")
        try:
            # Leases stay renewed until the last ack is sent, through the grace period.
            async with self._renewing():
                grace = self._options.shutdown_grace
                try:
                    if self._hooks.consumer_started is not None:
                        await self._hooks.consumer_started(self._group, tuple(topics))
                    # Each runner gets a copy of this context, as a task started here would.
                    context = contextvars.copy_context()
                    for _ in range(self._options.concurrency):
                        self._start_runner(run, context)
                    await self._claim_loop(run, topics)
                except asyncio.CancelledError:
                    grace = 0.0
                    raise
                finally:
                    try:
                        await self._shut_down(run, grace)
                    finally:
                        await self._close_acks(run, acker)
        finally:
            try:
                if self._hooks.consumer_stopped is not None:
                    await self._hooks.consumer_stopped(self._group, tuple(topics))
            finally:
                self._run = None
                run.stopped.set()

    def stop(self) -> None:
        """Stop claiming; running handlers get the shutdown grace period to finish."""
        run = self._run
        if run is None:
            return
        run.stop.set()
        run.slot_freed.set()
        self._wake(run, len(run.idle))
        if run.waiting is not None:
            run.waiting.cancel()

    def abort(self) -> None:
        """Stop at once as a crashed process would: nothing is acked or given back."""
        if self._run is not None:
            self._run.aborted = True
            self._run.abort.set()  # also cuts a shutdown grace in progress short
            # A crashed process renews nothing: the leases run out as they would.
            self._deliveries.clear()
            self._held.clear()
            self.stop()

    def runs_handler(self, task: asyncio.Task[object] | None) -> bool:
        """Whether ``task`` is one of the tasks running this consumer's handlers."""
        run = self._run
        return run is not None and task is not None and task in run.busy

    async def wait_stopped(self) -> None:
        """Return once a running :meth:`run` has finished (at once if none runs)."""
        if self._run is not None:
            await self._run.stopped.wait()

    # -- claiming ------------------------------------------------------------------------

    async def _claim(self, topics: list[str], count: int) -> list[Message]:
        # Each claim starts from the next topic, so a busy topic cannot starve the others
        # when only a few slots are free.
        self._rotation = (self._rotation + 1) % len(topics)
        return await self._transport.claim(
            self._group,
            topics[self._rotation :] + topics[: self._rotation],
            max_count=count,
            lease=self._options.lease,
            max_attempts=self._router.max_attempts(topics),
        )

    async def _claim_loop(self, run: _Run, topics: list[str]) -> None:
        """Keep the buffer filled ahead of the runners, as far as they keep up.

        The consumer holds (runs or buffers) at most ``concurrency`` events plus a
        prefetch that follows the handlers. It starts at none, grows by ``concurrency``
        (up to the ``prefetch`` option) when a claim finds a runner free and at least half
        of what may be held finished since the previous claim (the handlers outpace the
        claims), halves when a claim finds every runner busy (the handlers are the
        bottleneck: more buffered events would only wait, while another consumer could
        run them), and is none again once a claim finds the queue empty (a consumer that
        was idle must not take a small queue's every event from the others). With the
        buffer empty a claim goes out for whatever may be held; with
        events still buffered only once half of the limit is free, so that claims are
        large and, after a full claim, the next one is on its way while the runners work.
        """
        stop, slot_freed, buffer, busy = run.stop, run.slot_freed, run.buffer, run.busy
        concurrency, most = self._options.concurrency, self._options.prefetch
        prefetch = 0
        mark = 0
        me = asyncio.current_task()
        while not stop.is_set():
            if me is not None and me.cancelling():
                # run() was cancelled, and a transport call lost the CancelledError
                # (see broker_core.cancellation): raise it here instead.
                raise asyncio.CancelledError
            limit = concurrency + prefetch
            room = limit - len(buffer) - len(busy)
            if room <= 0 or (buffer and room < limit // 2) or run.isolated is not None:
                if run.isolated is None:
                    run.claim_at = limit - (max(1, limit // 2) if buffer else 1)
                    run.claim_epoch += 1
                await slot_freed.wait()
                slot_freed.clear()
                continue
            run.claim_at = -1
            if len(busy) >= concurrency:
                prefetch //= 2
            elif run.finished - mark >= max(1, limit // 2) and prefetch < most:
                prefetch = min(most, prefetch + concurrency)
            room = concurrency + prefetch - len(buffer) - len(busy)
            mark = run.finished
            try:
                claimed_at = time.monotonic()
                messages = await self._claim(topics, room)
                if not messages:
                    # Idle: the queue ran dry. What comes next may be few events another
                    # idle consumer should share, so the prefetch starts again from none.
                    prefetch = 0
                    await self._idle(run, topics)
                    continue
            except Exception as exc:
                _log_failure("claim", exc, f"retrying in {_TRANSPORT_RETRY_DELAY}s")
                await self._sleep_unless_stopped(run, _TRANSPORT_RETRY_DELAY)
                continue
            if len(messages) > 1 and any(m.isolated for m in messages):
                messages = await self._keep_alone(messages)
            held = self._held
            expires_at = claimed_at + self._options.lease
            for message in messages:
                if message.isolated:
                    run.isolated = message.receipt
                held[message.receipt] = expires_at
                buffer.append(message)
            limit = concurrency + prefetch
            if len(messages) >= room:
                # A full claim: the queue likely holds more, worth claiming early.
                run.claim_at = limit - max(1, limit // 2)
                run.claim_epoch += 1
            self._wake(run, len(messages))
            # Let the runners start on these before the next claim goes out (latency, and
            # another consumer's claim of a short queue gets its turn).
            await asyncio.sleep(0)

    async def _keep_alone(self, messages: list[Message]) -> list[Message]:
        """The first isolated message alone; the others a faulty transport sent, released."""
        first = next(m for m in messages if m.isolated)
        log.error(
            "the transport handed out an isolated event with %d others, against the "
            "protocol; giving those back",
            len(messages) - 1,
        )
        await self._give_back([m.receipt for m in messages if m is not first])
        return [first]

    def _start_runner(self, run: _Run, context: contextvars.Context) -> None:
        runner = asyncio.get_running_loop().create_task(
            self._runner(run, context), name="broker-handler", context=context.copy()
        )
        run.runners.add(runner)
        runner.add_done_callback(run.runners.discard)

    async def _runner(self, run: _Run, context: contextvars.Context) -> None:
        """Handle buffered events one after another, until the run stops.

        ``concurrency`` runners hand the events out, rather than one task per event: a
        handler that never waits then costs no task and no trip through the event loop.
        Each handler still runs in a task of its own at a time (cancelled alone, its
        receipt given back) and starts in a copy of the context :meth:`run` started in:
        should a handler leave a context variable changed, its runner ends and a fresh
        one, with a fresh copy, takes over.
        """
        task = asyncio.current_task()
        assert task is not None
        buffer, busy, held = run.buffer, run.busy, self._held
        handle = self._handle
        margin = self._options.lease * _START_MARGIN
        yielded = -1
        while True:
            while not buffer or run.stop.is_set():
                if run.stop.is_set():
                    return
                idle = asyncio.get_running_loop().create_future()
                run.idle.append(idle)
                await idle
            if len(buffer) + len(busy) <= run.claim_at and yielded != run.claim_epoch:
                # The claim loop waits for this much room: let it send its claim (and the
                # ack loop its acks) now, to overlap with the handlers, rather than once
                # handlers that never wait have emptied the buffer. Once per claim: the
                # claim loop may be busy elsewhere (waiting for work, or for an isolated
                # event), and the buffered events must still be handled.
                yielded = run.claim_epoch
                await asyncio.sleep(0)
                continue
            message = buffer.popleft()
            receipt = message.receipt
            expires_at = held.pop(receipt, None)
            busy[task] = receipt
            try:
                now = time.monotonic()
                if expires_at is None or now >= expires_at:
                    # Renewal was refused, or never came: another consumer may hold it now.
                    log.warning("lost the lease of buffered event %s; not handling it", receipt)
                    continue
                if expires_at - now < margin:
                    # Renewals fell behind (failing, or the loop was starved): the handler
                    # could outlive what is left. Renewed first, or not started.
                    renewed = await self._renewed_to_start(receipt)
                    if renewed is None:
                        continue
                    if run.stop.is_set():
                        # Stopped meanwhile: given back unstarted, with the others.
                        run.cancelled.append(receipt)
                        continue
                    expires_at = renewed
                try:
                    # (_process written out: one coroutine less per event.)
                    await handle(message, expires_at)
                except Exception as exc:
                    _settling_failed(message, exc)
            except asyncio.CancelledError:
                run.cancelled.append(receipt)
                raise
            finally:
                del busy[task]
                self._finished(run, receipt)
            if contextvars.copy_context() != context:
                self._start_runner(run, context)
                return

    async def _renewed_to_start(self, receipt: Receipt) -> float | None:
        """Renew a buffered event's lease before its handler starts; None: do not start it.

        Returns the renewed lease's end (monotonic). A refused or failed renewal leaves
        the event to whoever holds it now, or to its lease's expiry.
        """
        lease = self._options.lease
        asked_at = time.monotonic()
        try:
            [renewed] = checked_results(
                await self._transport.extend([receipt], lease), [receipt], "extend"
            )
        except Exception as exc:
            _log_failure(
                f"renewing the lease of buffered event {receipt.event_id} before it starts",
                exc,
                "not handling it; it returns when its lease expires",
            )
            return None
        if not renewed:
            log.warning("lost the lease of buffered event %s; not handling it", receipt)
            return None
        return asked_at + lease

    @staticmethod
    def _wake(run: _Run, count: int) -> None:
        """Wake up to ``count`` idle runners (one per new event, not all of them)."""
        idle = run.idle
        while count > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled runner's
                waiter.set_result(None)
                count -= 1

    @staticmethod
    def _finished(run: _Run, receipt: Receipt) -> None:
        run.finished += 1
        if run.isolated is not None and run.isolated == receipt:
            run.isolated = None
        run.slot_freed.set()

    async def _others_done(self, run: _Run, receipt: Receipt) -> None:
        """Wait until every other handler of this run has finished and its ack is answered.

        Meanwhile the isolated event's lease is renewed. Should it crash the process, no
        other event is then charged: none is leased but by its own handler's outcome. The
        wait for acks is bounded by one lease: a store that does not answer them must not
        hold the consumer up for good.
        """
        if len(run.busy) > 1:
            log.info(
                "event %s (%s/%s) lost its last lease; it runs alone once %d running "
                "handlers finish",
                receipt.event_id,
                receipt.topic,
                receipt.group,
                len(run.busy) - 1,
            )
            while len(run.busy) > 1:
                run.slot_freed.clear()
                await run.slot_freed.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.lease):
                while self._acking:
                    run.acks_answered.clear()
                    if self._acks:
                        await self._flush_acks()
                    else:
                        await run.acks_answered.wait()  # an ack is on the wire

    async def _idle(self, run: _Run, topics: list[str]) -> None:
        """Wait for work, a stop, or the poll interval, whichever comes first.

        :meth:`stop` cancels the wait, so one task waits, not two.
        """
        if run.stop.is_set():
            return
        waiting = asyncio.ensure_future(
            self._transport.wait(self._group, topics, self._options.poll_interval)
        )
        run.waiting = waiting
        try:
            await waiting
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if waiting.cancelled() and task is not None and not task.cancelling():
                return  # stop() cancelled the wait, not someone cancelling run()
            raise
        except Exception as exc:
            # Not a busy loop either way: pause before claiming again.
            _log_failure("waiting for events", exc, f"claiming in {_TRANSPORT_RETRY_DELAY}s")
            await self._sleep_unless_stopped(run, _TRANSPORT_RETRY_DELAY)
        finally:
            run.waiting = None

    async def _sleep_unless_stopped(self, run: _Run, seconds: float) -> None:
        # Not wait_for: on CPython 3.11 it drops a cancellation that comes with the stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await run.stop.wait()

    # -- handling ------------------------------------------------------------------------

    async def _process(self, message: Message, expires_at: float) -> None:
        """Handle one delivery and settle it; transport failures leave the lease to expire.

        ``expires_at`` is when its lease surely ends unless renewed (monotonic): the
        claim's send time plus the lease, or later once renewed while it was buffered.
        """
        try:
            await self._handle(message, expires_at)
        except Exception as exc:
            # Handlers' own exceptions are settled in _handle: this is the transport's.
            _settling_failed(message, exc)

    async def _handle(self, message: Message, expires_at: float) -> None:
        receipt = message.receipt
        hooks = self._hooks
        if hooks.delivery_claimed is not None:
            await hooks.delivery_claimed(
                receipt.topic, receipt.group, receipt.event_id, message.attempt
            )
        try:
            event = decode(message.body, self._router.types)
        except DecodeError as exc:
            log.error("dead-lettering undecodable event %s: %s", message.event_id, exc)
            await self._transport.kill(receipt, reason="undecodable", error=safe_text(str(exc)))
            return
        route = self._router.route(receipt.topic, event)
        if route is None:
            # The group subscribed to the topic but handles no event of this type.
            log.debug("no handler for %s on %s; acking", event.type_name, receipt.topic)
            self._queue_ack(receipt)
            return
        if message.attempt > route.retry.max_attempts:
            error = f"attempt {message.attempt} exceeds max_attempts {route.retry.max_attempts}"
            if not await self._transport.kill(receipt, reason="max_attempts", error=error):
                log.warning("lease of event %s was lost before it died", message.event_id)
            return
        delivery: Delivery[Event] = Delivery(event, message, self._transport, expires_at)
        self._deliveries[receipt] = delivery
        run = self._run
        if message.isolated and run is not None:
            try:
                await self._others_done(run, receipt)
            except BaseException:
                self._deliveries.pop(receipt, None)
                raise  # cancelled by the shutdown: the caller gives it back
            if run.stop.is_set() or delivery.lease_lost:
                # Not started: a stopping consumer gives it back uncharged, and a lost
                # lease leaves it to its new holder.
                self._deliveries.pop(receipt, None)
                if not delivery.lease_lost and not run.aborted:
                    await self._give_back([receipt])
                return
        try:
            # In the try: a shutdown that cancels the hook gives the event back, unstarted.
            if hooks.handler_started is not None:
                await hooks.handler_started(delivery)
            await route.invoke(event, delivery)
        except asyncio.CancelledError as exc:
            self._deliveries.pop(receipt, None)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                if hooks.handler_finished is not None and not self._aborted():
                    hooks.handler_finished(delivery, _RELEASED, exc)
                raise  # shut down before the handler finished: the caller gives it back
            # The handler's own code raised it (a cancelled future it awaited): a failure.
            if not self._aborted():
                await self._fail(delivery, route.retry, exc)
        except Exception as exc:
            self._deliveries.pop(receipt, None)
            if not self._aborted():
                await self._fail(delivery, route.retry, exc)
        else:
            if run is not None and run.aborted:
                # A plain-function handler that outlived an abort: a crashed process
                # would not have acked it either.
                self._deliveries.pop(receipt, None)
            else:
                if hooks.handler_finished is not None:
                    hooks.handler_finished(delivery, ACKED, None)
                # (_queue_ack written out: this is every handled event's path.)
                self._acks.append(receipt)
                self._acking.add(receipt)
                if run is not None:
                    run.acks_queued.set()

    def _aborted(self) -> bool:
        return self._run is not None and self._run.aborted

    async def _fail(
        self, delivery: Delivery[Event], retry: RetryPolicy, exc: BaseException
    ) -> None:
        error = _describe(exc)
        finished, settled_hook = self._hooks.handler_finished, self._hooks.delivery_settled
        if delivery.lease_lost:
            log.warning("handler failed after its lease was lost (%s): %s", delivery, error)
            if finished is not None:
                lost = Outcome(OutcomeKind.LEASE_LOST, error=error)
                finished(delivery, lost, exc)
            return
        if retry.exhausted(delivery.attempt):
            log.error("dead-lettering %s after %d attempts: %s", delivery, delivery.attempt, error)
            outcome = Outcome(OutcomeKind.DEAD, error=error)
            if finished is not None:
                finished(delivery, outcome, exc)
            settled = await self._transport.kill(
                delivery.receipt, reason="max_attempts", error=error
            )
        else:
            delay = retry.delay(delivery.attempt)
            log.info("%s failed, retrying in %.2fs: %s", delivery, delay, error)
            outcome = Outcome(OutcomeKind.RETRIED, delay=delay, error=error)
            if finished is not None:
                finished(delivery, outcome, exc)
            settled = await self._transport.nack(delivery.receipt, delay=delay, error=error)
        if not settled:
            log.warning("lease of %s was lost before its failure was recorded", delivery)
            outcome = Outcome(OutcomeKind.LEASE_LOST, error=error)
        if settled_hook is not None:
            settled_hook(delivery, outcome)

    # -- acks ----------------------------------------------------------------------------

    def _queue_ack(self, receipt: Receipt) -> None:
        self._acks.append(receipt)
        self._acking.add(receipt)
        if self._run is not None:
            self._run.acks_queued.set()

    async def _ack_loop(self, run: _Run) -> None:
        # Acks queued while one batch is on the wire go together in the next call.
        # An abort ends it by cancellation, and also by the flag: a cancellation can be
        # lost inside the store's client (seen on Redis under load: the task stayed
        # "cancelling", waiting here for acks that never came, and run() never ended).
        while not run.aborted:
            await run.acks_queued.wait()
            run.acks_queued.clear()
            if run.aborted:
                return
            await self._flush_acks()
            if run.acks_closing and not self._acks:
                return

    async def _close_acks(self, run: _Run, acker: asyncio.Task[None]) -> None:
        """Let the ack loop send what is queued (and on the wire), then end it."""
        if run.aborted:
            # A crashed process sends nothing: these events will be redelivered.
            acker.cancel()
            run.acks_queued.set()
            await asyncio.gather(acker, return_exceptions=True)
            self._acks.clear()
            self._acking.clear()
            self._deliveries.clear()
            return
        run.acks_closing = True
        run.acks_queued.set()
        # Cut off by a cancellation, the acks on the wire would be dropped, and handled
        # events run again elsewhere.
        await to_the_end(acker)

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        if not batch:
            return
        settled = self._hooks.delivery_settled
        try:
            results = checked_results(await self._transport.ack(batch), batch, "ack")
        except Exception as exc:
            # Any failure, not only an outage: the loop must go on acking later events.
            _log_failure(f"acking {len(batch)} events", exc, "they will be redelivered")
            results = [True] * len(batch)
            settled = None  # nothing is known of these events' fate
        except BaseException:
            # Cancelled with the batch on the wire: its answer will never be read.
            for receipt in batch:
                self._acking.discard(receipt)
                self._deliveries.pop(receipt, None)
            raise
        finally:
            if self._run is not None:
                self._run.acks_answered.set()
        for receipt, acked in zip(batch, results, strict=True):
            self._acking.discard(receipt)
            delivery = self._deliveries.pop(receipt, None)
            if not acked:
                log.warning(
                    "ack of event %s (%s/%s) came after its lease was lost; it changed nothing",
                    receipt.event_id,
                    receipt.topic,
                    receipt.group,
                )
                if delivery is not None:
                    delivery.mark_lease_lost()
            if settled is not None and delivery is not None:
                settled(delivery, ACKED if acked else _LEASE_LOST)

    # -- leases --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """Keep the leases of running deliveries renewed while any such block runs."""
        self._renewers += 1
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew_leases(), name="broker-leases")
        try:
            yield
        finally:
            self._renewers -= 1
            if self._renewers == 0 and self._renewal is not None:
                renewal, self._renewal = self._renewal, None
                # The loop logs its own failures; what is left to know is that it ended,
                # also if this task is cancelled again meanwhile (the loop's cancellation
                # may have been lost, and it would renew on for good).
                with contextlib.suppress(Exception):
                    await to_the_end(asyncio.ensure_future(cancel_and_wait(renewal)))

    async def _renew_leases(self) -> None:
        lease = self._options.lease
        while True:
            await asyncio.sleep(lease / 3)
            receipts = [*self._deliveries, *self._held]
            if not receipts:
                continue
            asked_at = time.monotonic()
            try:
                results = checked_results(
                    await self._transport.extend(receipts, lease), receipts, "extend"
                )
            except Exception as exc:
                # Deliveries notice by themselves once their leases run out unrenewed.
                _log_failure("lease renewal", exc, "trying again next period")
                continue
            held = self._held
            for receipt, renewed in zip(receipts, results, strict=True):
                delivery = self._deliveries.get(receipt)
                if delivery is None:
                    if receipt in held:
                        # Not started yet: a refused renewal drops it (see _runner).
                        held[receipt] = (
                            max(held[receipt], asked_at + lease) if renewed else -math.inf
                        )
                    continue
                if renewed:
                    delivery.renewed(asked_at + lease)
                elif receipt not in self._acking:
                    # (An ack that overtook this renewal also makes it fail: the ack's
                    # answer tells, when it comes.)
                    log.warning("lost the lease of %s", delivery)
                    delivery.mark_lease_lost()

    # -- stopping ------------------------------------------------------------------------

    async def _shut_down(self, run: _Run, grace: float) -> None:
        # Also when run() itself was cancelled: a runner whose handler outlives its
        # cancellation (a plain function in a thread) must end once it returns, not take
        # more work.
        run.stop.set()
        buffered = [message.receipt for message in run.buffer]
        run.buffer.clear()
        for receipt in buffered:
            self._held.pop(receipt, None)
        try:
            if not run.aborted:
                # Events no handler started go back at once, for other consumers.
                await self._give_back(buffered)
            if run.busy and not run.aborted and grace > 0:
                handlers = asyncio.ensure_future(asyncio.wait(set(run.busy)))
                aborting = asyncio.ensure_future(run.abort.wait())
                try:
                    await asyncio.wait(
                        {handlers, aborting}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    handlers.cancel()
                    aborting.cancel()
        finally:
            # Also when run() is cancelled during the grace period: no handler may go on
            # running once its lease stops being renewed.
            await self._end_tasks(run)

    async def _end_tasks(self, run: _Run) -> None:
        # Cancelled until they end: a handler's own call may lose one cancellation.
        again = _HANDLER_CANCELLED_AGAIN_AFTER
        runners = [cancel_and_wait(runner, again_after=again) for runner in run.runners]
        # To their end even if run() is cancelled again: a handler in a thread goes on
        # regardless, and its outcome is settled (its lease renewed) only while run() waits.
        await to_the_end(asyncio.gather(*runners, return_exceptions=True))
        unhandled = list(run.cancelled)
        run.cancelled.clear()
        if not run.aborted:
            await self._give_back(unhandled)

    async def _give_back(self, receipts: Sequence[Receipt]) -> None:
        """Release events this consumer will not handle, in one call, under a deadline."""
        if not receipts:
            return
        # Cut off by a cancellation, the events would wait out their leases, and then
        # count as a crash's (an attempt charged, run alone).
        await to_the_end(asyncio.ensure_future(self._release(receipts)))

    async def _release(self, receipts: Sequence[Receipt]) -> None:
        try:
            async with asyncio.timeout(_GIVE_BACK_TIMEOUT):
                await self._transport.release(receipts)
        except Exception as exc:
            _log_failure(f"giving back {len(receipts)} events", exc, "their leases will expire")
