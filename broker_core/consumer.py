"""The consumer loop: claim events, run their handlers, settle the outcome.

One consumer per broker. It claims as many events as it has free handler slots, runs
each in its own task, and settles each delivery: success is acked (acks from many
handlers travel together in one call), failure is retried by the handler's retry policy
or dead-lettered, an undecodable body is dead-lettered at once. One renewal task extends
the leases of all running deliveries in one call per period, so a slow handler keeps its
event while its process lives, and a crashed process's leases simply expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from broker_core.codec import DecodeError, decode
from broker_core.delivery import Delivery
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_core.handlers import Router
from broker_core.retry import RetryPolicy
from broker_core.settings import BrokerOptions
from broker_core.transport import Message, Receipt, Transport

__all__ = ["Consumer"]

log = logging.getLogger("broker.consumer")

_TRANSPORT_RETRY_DELAY = 0.5
"""Seconds to wait before claiming again after the transport failed."""


class Consumer:
    """Runs a group's handlers over a transport; used through :class:`~broker_core.Broker`."""

    def __init__(
        self, transport: Transport, group: str, router: Router, options: BrokerOptions
    ) -> None:
        self._transport = transport
        self._group = group
        self._router = router
        self._options = options
        # The task of each claimed event while it runs. A task cancelled before it
        # started never removes itself: its event was claimed but never handled.
        self._tasks: dict[Receipt, asyncio.Task[None]] = {}
        # Deliveries whose leases are renewed: running, or handled and waiting for the ack.
        self._deliveries: dict[Receipt, Delivery[Event]] = {}
        self._acks: list[Receipt] = []
        self._acks_queued: asyncio.Event | None = None
        self._acks_closing = False
        self._slot_freed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._waiting: asyncio.Future[bool] | None = None
        self._aborted = False
        self._running = False
        self._renewers = 0
        self._renewal: asyncio.Task[None] | None = None
        self._rotation = 0

    # -- public --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is in progress."""
        return self._running

    async def pick(self, topics: list[str]) -> bool:
        """Claim at most one event of ``topics``, handle and settle it; False if none."""
        claimed_at = time.monotonic()
        messages = await self._claim(topics, 1)
        if not messages:
            return False
        async with self._renewing():
            await self._process(messages[0], claimed_at)
            await self._flush_acks()
        return True

    async def run(self, topics: list[str]) -> None:
        """Consume ``topics`` until :meth:`stop`, :meth:`abort` or cancellation."""
        if self._running:
            raise RuntimeError("this broker is already running")
        self._running = True
        self._aborted = False
        self._acks_closing = False
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._acks_queued = asyncio.Event()
        acker = asyncio.create_task(self._ack_loop(), name="broker-acks")
        try:
            # Leases stay renewed until the last ack is sent, through the grace period.
            async with self._renewing():
                grace = self._options.shutdown_grace
                try:
                    await self._claim_loop(topics)
                except asyncio.CancelledError:
                    grace = 0.0
                    raise
                finally:
                    try:
                        await self._shut_down(grace)
                    finally:
                        await self._close_acks(acker)
        finally:
            self._running = False
            self._aborted = False
            self._stopped.set()

    def stop(self) -> None:
        """Stop claiming; running handlers get the shutdown grace period to finish."""
        for event in (self._stop, self._slot_freed):
            if event is not None:
                event.set()
        if self._waiting is not None:
            self._waiting.cancel()

    def abort(self) -> None:
        """Stop at once as a crashed process would: nothing is acked or given back."""
        self._aborted = True
        self.stop()

    def runs_handler(self, task: asyncio.Task[object] | None) -> bool:
        """Whether ``task`` is one of the tasks running this consumer's handlers."""
        return task is not None and any(task is t for t in self._tasks.values())

    async def wait_stopped(self) -> None:
        """Return once a running :meth:`run` has finished (at once if none runs)."""
        if self._running and self._stopped is not None:
            await self._stopped.wait()

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

    async def _claim_loop(self, topics: list[str]) -> None:
        assert self._stop is not None and self._slot_freed is not None
        stop, slot_freed, tasks = self._stop, self._slot_freed, self._tasks
        concurrency = self._options.concurrency
        # One claim asks for at most half the slots, so that while the handlers of one
        # batch run, the claim of the next is already on its way (with a remote store,
        # the consumer and the store then work at the same time instead of in turn).
        chunk = max(1, concurrency // 2)
        create_task = asyncio.get_running_loop().create_task
        run_claimed = self._run_claimed
        while not stop.is_set():
            free = concurrency - len(tasks)
            if free <= 0:
                await slot_freed.wait()
                slot_freed.clear()
                continue
            try:
                ask = min(free, chunk)
                claimed_at = time.monotonic()
                messages = await self._claim(topics, ask)
                if not messages:
                    await self._idle(topics)
                    continue
            except TransportError as exc:
                log.warning("claim failed, retrying in %.1fs: %s", _TRANSPORT_RETRY_DELAY, exc)
                await self._sleep_unless_stopped(_TRANSPORT_RETRY_DELAY)
                continue
            for message in messages:
                # One task per event: each handler has its own task and context, as if
                # the application had started it.
                tasks[message.receipt] = create_task(run_claimed(message, claimed_at))
            if len(messages) < ask:
                # The queue is (nearly) empty: let these handlers start before the next
                # claim goes out, rather than after it (latency). A full claim goes on at
                # once instead, so that it overlaps with the handlers (throughput).
                await asyncio.sleep(0)

    async def _run_claimed(self, message: Message, claimed_at: float) -> None:
        """The task of one claimed event: process it, then give its slot back."""
        try:
            await self._process(message, claimed_at)
        finally:
            # Here rather than in a done-callback, which costs one more trip through the
            # event loop per event.
            self._tasks.pop(message.receipt, None)
            if self._slot_freed is not None:
                self._slot_freed.set()

    async def _idle(self, topics: list[str]) -> None:
        """Wait for work, a stop, or the poll interval, whichever comes first.

        :meth:`stop` cancels the wait, so one task waits, not two.
        """
        assert self._stop is not None
        if self._stop.is_set():
            return
        waiting = asyncio.ensure_future(
            self._transport.wait(self._group, topics, self._options.poll_interval)
        )
        self._waiting = waiting
        try:
            await waiting
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if waiting.cancelled() and task is not None and not task.cancelling():
                return  # stop() cancelled the wait, not someone cancelling run()
            raise
        except TransportError as exc:
            log.warning("waiting for events failed: %s", exc)
            await self._sleep_unless_stopped(_TRANSPORT_RETRY_DELAY)
        except Exception:
            # A transport's bug, not an outage: say so, and do not turn it into a busy loop.
            log.exception("the transport's wait() failed")
            await self._sleep_unless_stopped(_TRANSPORT_RETRY_DELAY)
        finally:
            self._waiting = None

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- handling ------------------------------------------------------------------------

    async def _process(self, message: Message, claimed_at: float) -> None:
        """Handle one delivery and settle it; transport failures leave the lease to expire.

        ``claimed_at`` is when the claim was sent (monotonic): the lease cannot have
        begun earlier, so it surely ends by ``claimed_at + lease``.
        """
        try:
            await self._handle(message, claimed_at)
        except TransportError as exc:
            log.warning(
                "could not settle event %s (%s/%s); it returns when its lease expires: %s",
                message.event_id,
                message.topic,
                message.group,
                exc,
            )

    async def _handle(self, message: Message, claimed_at: float) -> None:
        receipt = message.receipt
        try:
            event = decode(message.body, self._router.types)
        except DecodeError as exc:
            log.error("dead-lettering undecodable event %s: %s", message.event_id, exc)
            await self._transport.kill(receipt, reason="undecodable", error=str(exc))
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
        try:
            await route.invoke(event, delivery)
        except asyncio.CancelledError:
            self._deliveries.pop(receipt, None)
            if not self._aborted:
                # Shut down before the handler finished: give the event back at once.
                await asyncio.shield(self._transport.nack(receipt, error="consumer stopped"))
            raise
        except Exception as exc:
            self._deliveries.pop(receipt, None)
            if not self._aborted:
                await self._fail(delivery, route.retry, exc)
        else:
            if self._aborted:
                # A plain-function handler that outlived an abort: a crashed process
                # would not have acked it either.
                self._deliveries.pop(receipt, None)
            else:
                self._queue_ack(receipt)

    async def _fail(self, delivery: Delivery[Event], retry: RetryPolicy, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if delivery.lease_lost:
            log.warning("handler failed after its lease was lost (%s): %s", delivery, error)
            return
        if retry.exhausted(delivery.attempt):
            log.error("dead-lettering %s after %d attempts: %s", delivery, delivery.attempt, error)
            settled = await self._transport.kill(
                delivery.receipt, reason="max_attempts", error=error
            )
        else:
            delay = retry.delay(delivery.attempt)
            log.info("%s failed, retrying in %.2fs: %s", delivery, delay, error)
            settled = await self._transport.nack(delivery.receipt, delay=delay, error=error)
        if not settled:
            log.warning("lease of %s was lost before its failure was recorded", delivery)

    # -- acks ----------------------------------------------------------------------------

    def _queue_ack(self, receipt: Receipt) -> None:
        self._acks.append(receipt)
        if self._acks_queued is not None:
            self._acks_queued.set()

    async def _ack_loop(self) -> None:
        # Acks queued while one batch is on the wire go together in the next call.
        assert self._acks_queued is not None
        while True:
            await self._acks_queued.wait()
            self._acks_queued.clear()
            await self._flush_acks()
            if self._acks_closing and not self._acks:
                return

    async def _close_acks(self, acker: asyncio.Task[None]) -> None:
        """Let the ack loop send what is queued (and on the wire), then end it."""
        assert self._acks_queued is not None
        if self._aborted:
            # A crashed process sends nothing: these events will be redelivered.
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            self._acks.clear()
            self._deliveries.clear()
            return
        self._acks_closing = True
        self._acks_queued.set()
        await acker

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        if not batch:
            return
        try:
            results = await self._transport.ack(batch)
        except Exception as exc:
            # Any failure, not only an outage: the loop must go on acking later events.
            log.warning("%d acks failed; those events will be redelivered: %s", len(batch), exc)
            results = [True] * len(batch)
        for receipt, acked in zip(batch, results, strict=True):
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
                log.warning("lease renewal failed: %s", exc)
                continue
            for receipt, renewed in zip(receipts, results, strict=True):
                delivery = self._deliveries.get(receipt)
                if delivery is None:
                    continue
                if renewed:
                    delivery.renewed(asked_at + lease)
                else:
                    log.warning("lost the lease of %s", delivery)
                    delivery.mark_lease_lost()

    # -- stopping ------------------------------------------------------------------------

    async def _shut_down(self, grace: float) -> None:
        try:
            if self._tasks and not self._aborted and grace > 0:
                await asyncio.wait(set(self._tasks.values()), timeout=grace)
        finally:
            # Also when run() is cancelled during the grace period: no handler may go on
            # running once its lease stops being renewed.
            await self._end_tasks()

    async def _end_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        never_started = list(self._tasks)
        self._tasks.clear()
        if self._aborted:
            return
        for receipt in never_started:
            try:
                await self._transport.nack(receipt, error="consumer stopped")
            except TransportError as exc:
                log.warning("could not give back event %s: %s", receipt.event_id, exc)
