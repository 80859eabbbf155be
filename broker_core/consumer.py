"""The consumer loop: claim events, run their handlers, settle the outcome.

One consumer per broker. It claims as many events as it has free handler slots, runs
each in its own task, and settles each delivery: success is acked (acks from many
handlers travel together in one call), failure is retried by the handler's retry policy
or dead-lettered, an undecodable body is dead-lettered at once. One renewal task extends
the leases of all running deliveries in one call per period, so a slow handler keeps its
event while its process lives, and a crashed process's leases simply expire.

An event whose previous lease expired (``Message.isolated``) may be what crashed its
last consumer: it runs alone, after the handlers already running have finished and with
no other claim meanwhile, so that a crash it causes again charges no other event an
attempt. Events given back because the consumer stops are released with their attempt
uncounted.

Failures of the transport follow one rule everywhere: the consumer never dies of them.
A :class:`~broker_core.errors.TransportError` is an outage and is logged as a warning
with its message; any other exception is a bug of the transport and is logged as an
error with its traceback. Either way a failed claim or wait is tried again after a
pause, and an event whose ack, retry, renewal or release failed returns to the group
when its lease expires.

The lifecycle hooks (:mod:`broker_core.hooks`) are called at the points of this loop
their docstrings name; a hook nobody implements is skipped with one ``is None`` test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

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
from broker_core.transport import Message, Receipt, Transport

__all__ = ["Consumer"]

log = logging.getLogger("broker.consumer")

_TRANSPORT_RETRY_DELAY = 0.5
"""Seconds to wait before claiming again after the transport failed."""

_GIVE_BACK_TIMEOUT = 5.0
"""Longest wait, when stopping, for the events not handled to be given back; past it
(the store is unreachable) they return to the group when their leases expire."""


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
    acks_queued: asyncio.Event = field(default_factory=asyncio.Event)
    acks_answered: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[Receipt, asyncio.Task[None]] = field(default_factory=dict)
    """The task of each claimed event while it runs. A task cancelled before it started
    never removes itself: its event was claimed but never handled."""
    cancelled: list[Receipt] = field(default_factory=list)
    """Events whose handlers were cancelled by the shutdown: to be given back."""
    isolated: Receipt | None = None
    """The isolated event being run alone; no claim is made meanwhile."""
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
                await self._process(messages[0], claimed_at)
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
        if run.waiting is not None:
            run.waiting.cancel()

    def abort(self) -> None:
        """Stop at once as a crashed process would: nothing is acked or given back."""
        if self._run is not None:
            self._run.aborted = True
            self._run.abort.set()  # also cuts a shutdown grace in progress short
            # A crashed process renews nothing: the leases run out as they would.
            self._deliveries.clear()
            self.stop()

    def runs_handler(self, task: asyncio.Task[object] | None) -> bool:
        """Whether ``task`` is one of the tasks running this consumer's handlers."""
        run = self._run
        return run is not None and task is not None and any(task is t for t in run.tasks.values())

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
        stop, slot_freed, tasks = run.stop, run.slot_freed, run.tasks
        concurrency = self._options.concurrency
        # One claim asks for at most half the slots, so that while the handlers of one
        # batch run, the claim of the next is already on its way (with a remote store,
        # the consumer and the store then work at the same time instead of in turn).
        chunk = max(1, concurrency // 2)
        create_task = asyncio.get_running_loop().create_task
        run_claimed = self._run_claimed
        while not stop.is_set():
            free = concurrency - len(tasks)
            if free <= 0 or run.isolated is not None:
                await slot_freed.wait()
                slot_freed.clear()
                continue
            try:
                ask = min(free, chunk)
                claimed_at = time.monotonic()
                messages = await self._claim(topics, ask)
                if not messages:
                    await self._idle(run, topics)
                    continue
            except Exception as exc:
                _log_failure("claim", exc, f"retrying in {_TRANSPORT_RETRY_DELAY}s")
                await self._sleep_unless_stopped(run, _TRANSPORT_RETRY_DELAY)
                continue
            if len(messages) > 1 and any(m.isolated for m in messages):
                messages = await self._keep_alone(messages)
            for message in messages:
                if message.isolated:
                    run.isolated = message.receipt
                # One task per event: each handler has its own task and context, as if
                # the application had started it.
                tasks[message.receipt] = create_task(run_claimed(run, message, claimed_at))
            if len(messages) < ask:
                # The queue is (nearly) empty: let these handlers start before the next
                # claim goes out, rather than after it (latency). A full claim goes on at
                # once instead, so that it overlaps with the handlers (throughput).
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

    async def _run_claimed(self, run: _Run, message: Message, claimed_at: float) -> None:
        """The task of one claimed event: process it, then give its slot back."""
        receipt = message.receipt
        try:
            await self._process(message, claimed_at)
        except asyncio.CancelledError:
            run.cancelled.append(receipt)
            raise
        finally:
            # Here rather than in a done-callback, which costs one more trip through the
            # event loop per event.
            run.tasks.pop(receipt, None)
            if run.isolated == receipt:
                run.isolated = None
            run.slot_freed.set()

    async def _others_done(self, run: _Run, receipt: Receipt) -> None:
        """Wait until every other handler of this run has finished and its ack is answered.

        Meanwhile the isolated event's lease is renewed. Should it crash the process, no
        other event is then charged: none is leased but by its own handler's outcome. The
        wait for acks is bounded by one lease: a store that does not answer them must not
        hold the consumer up for good.
        """
        others = [t for r, t in run.tasks.items() if r != receipt]
        if others:
            log.info(
                "event %s (%s/%s) lost its last lease; it runs alone once %d running "
                "handlers finish",
                receipt.event_id,
                receipt.topic,
                receipt.group,
                len(others),
            )
            await asyncio.wait(others)
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), seconds)

    # -- handling ------------------------------------------------------------------------

    async def _process(self, message: Message, claimed_at: float) -> None:
        """Handle one delivery and settle it; transport failures leave the lease to expire.

        ``claimed_at`` is when the claim was sent (monotonic): the lease cannot have
        begun earlier, so it surely ends by ``claimed_at + lease``.
        """
        try:
            await self._handle(message, claimed_at)
        except Exception as exc:
            # Handlers' own exceptions are settled in _handle: this is the transport's.
            _log_failure(
                f"settling event {message.event_id} ({message.topic}/{message.group})",
                exc,
                "it returns when its lease expires",
            )

    async def _handle(self, message: Message, claimed_at: float) -> None:
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
        expires_at = claimed_at + self._options.lease
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
            if self._aborted():
                # A plain-function handler that outlived an abort: a crashed process
                # would not have acked it either.
                self._deliveries.pop(receipt, None)
            else:
                if hooks.handler_finished is not None:
                    hooks.handler_finished(delivery, ACKED, None)
                self._queue_ack(receipt)

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
        while True:
            await run.acks_queued.wait()
            run.acks_queued.clear()
            await self._flush_acks()
            if run.acks_closing and not self._acks:
                return

    async def _close_acks(self, run: _Run, acker: asyncio.Task[None]) -> None:
        """Let the ack loop send what is queued (and on the wire), then end it."""
        if run.aborted:
            # A crashed process sends nothing: these events will be redelivered.
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            self._acks.clear()
            self._acking.clear()
            self._deliveries.clear()
            return
        run.acks_closing = True
        run.acks_queued.set()
        await acker

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        if not batch:
            return
        settled = self._hooks.delivery_settled
        try:
            results = await self._transport.ack(batch)
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
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)

    async def _renew_leases(self) -> None:
        lease = self._options.lease
        while True:
            await asyncio.sleep(lease / 3)
            receipts = list(self._deliveries)
            if not receipts:
                continue
            asked_at = time.monotonic()
            try:
                results = await self._transport.extend(receipts, lease)
            except Exception as exc:
                # Deliveries notice by themselves once their leases run out unrenewed.
                _log_failure("lease renewal", exc, "trying again next period")
                continue
            for receipt, renewed in zip(receipts, results, strict=True):
                delivery = self._deliveries.get(receipt)
                if delivery is None:
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
        try:
            if run.tasks and not run.aborted and grace > 0:
                handlers = asyncio.ensure_future(asyncio.wait(set(run.tasks.values())))
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
        tasks = list(run.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Tasks cancelled before they started never removed themselves.
        unhandled = [*run.cancelled, *run.tasks]
        run.tasks.clear()
        run.cancelled.clear()
        if not run.aborted:
            await self._give_back(unhandled)

    async def _give_back(self, receipts: Sequence[Receipt]) -> None:
        """Release events this consumer will not handle, in one call, under a deadline."""
        if not receipts:
            return
        try:
            async with asyncio.timeout(_GIVE_BACK_TIMEOUT):
                await self._transport.release(receipts)
        except Exception as exc:
            _log_failure(f"giving back {len(receipts)} events", exc, "their leases will expire")
