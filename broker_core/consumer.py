"""The consumer loop: claim events, run their handlers, settle the outcome.

One consumer per broker. It claims as many events as it has free handler slots, runs
each in its own task, and settles each delivery: success is acked (acks from many
handlers travel together in one call), failure is retried by the handler's retry policy
or dead-lettered, an undecodable body is dead-lettered at once. One heartbeat renews the
leases of all running deliveries in one call per period, so a slow handler keeps its
event while its process lives, and a crashed process's leases simply expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries: dict[Receipt, Delivery[Event]] = {}
        self._acks: list[Receipt] = []
        self._acks_queued: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._aborted = False
        self._running = False
        self._heartbeats = 0
        self._waiting: asyncio.Future[bool] | None = None

    # -- public --------------------------------------------------------------------------

    async def pick(self, topics: list[str]) -> bool:
        """Claim at most one event of ``topics``, handle and settle it; False if none."""
        messages = await self._claim(topics, 1)
        if not messages:
            return False
        async with self._heartbeat():
            await self._process(messages[0])
            await self._flush_acks()
        return True

    async def run(self, topics: list[str]) -> None:
        """Consume ``topics`` until :meth:`stop`, :meth:`abort` or cancellation."""
        if self._running:
            raise RuntimeError("this broker is already running")
        self._running = True
        self._aborted = False
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._acks_queued = asyncio.Event()
        acker = asyncio.create_task(self._ack_loop(), name="broker-acks")
        cancelled = False
        try:
            async with self._heartbeat():
                await self._claim_loop(topics)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._shut_down(grace=0.0 if cancelled else self._options.shutdown_grace)
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            if self._aborted:
                # A crashed process sends nothing: these events will be redelivered.
                self._acks.clear()
                self._deliveries.clear()
            else:
                await self._flush_acks()
            self._running = False

    def stop(self) -> None:
        """Stop claiming; running handlers get the shutdown grace period to finish."""
        if self._stop is not None:
            self._stop.set()
        if self._slot_freed is not None:
            self._slot_freed.set()
        if self._waiting is not None:
            self._waiting.cancel()

    def abort(self) -> None:
        """Stop at once as a crashed process would: nothing is acked or given back."""
        self._aborted = True
        self.stop()

    # -- claiming ------------------------------------------------------------------------

    async def _claim(self, topics: list[str], count: int) -> list[Message]:
        return await self._transport.claim(
            self._group,
            topics,
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
                messages = await self._claim(topics, min(free, chunk))
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
                tasks.add(create_task(run_claimed(message)))

    async def _run_claimed(self, message: Message) -> None:
        """The task of one claimed event: handle and settle it (as :meth:`_process`), then
        give its slot back."""
        try:
            await self._handle(message)
        except TransportError as exc:
            self._settle_failed(message, exc)
        finally:
            # Done here rather than in a done-callback, which would cost one more trip
            # through the event loop per event. A task cancelled before it ever ran
            # never gets here; _shut_down forgets those.
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
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
            # As before: any other failure of a wait just ends the wait; the next
            # claim meets the problem (or the work) anyway.
            pass
        finally:
            self._waiting = None

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- handling ------------------------------------------------------------------------

    async def _process(self, message: Message) -> None:
        """Handle one delivery and settle it; transport failures leave the lease to expire."""
        try:
            await self._handle(message)
        except TransportError as exc:
            self._settle_failed(message, exc)

    @staticmethod
    def _settle_failed(message: Message, exc: TransportError) -> None:
        log.warning(
            "could not settle event %s (%s/%s); it returns when its lease expires: %s",
            message.event_id,
            message.topic,
            message.group,
            exc,
        )

    async def _handle(self, message: Message) -> None:
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
            await self._kill(
                message,
                f"attempt {message.attempt} exceeds max_attempts {route.retry.max_attempts}",
            )
            return
        delivery: Delivery[Event] = Delivery(event, message, self._transport)
        self._deliveries[receipt] = delivery
        try:
            await route.invoke(event, delivery)
        except asyncio.CancelledError:
            if not self._aborted:
                # Shut down before the handler finished: give the event back at once.
                await asyncio.shield(self._transport.nack(receipt, error="consumer stopped"))
            self._deliveries.pop(receipt, None)
            raise
        except Exception as exc:
            self._deliveries.pop(receipt, None)
            await self._fail(delivery, route.retry, exc)
        else:
            self._acks.append(receipt)
            if self._acks_queued is not None:
                self._acks_queued.set()

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

    async def _kill(self, message: Message, error: str) -> None:
        if not await self._transport.kill(message.receipt, reason="max_attempts", error=error):
            log.warning("lease of event %s was lost before it was dead-lettered", message.event_id)

    # -- acks and leases -----------------------------------------------------------------

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

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        if not batch:
            return
        try:
            results = await self._transport.ack(batch)
        except TransportError as exc:
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

    @contextlib.asynccontextmanager
    async def _heartbeat(self) -> AsyncIterator[None]:
        """Renew the leases of running deliveries while the block runs."""
        self._heartbeats += 1
        task = asyncio.create_task(self._renew_leases()) if self._heartbeats == 1 else None
        try:
            yield
        finally:
            self._heartbeats -= 1
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _renew_leases(self) -> None:
        lease = self._options.lease
        while True:
            await asyncio.sleep(lease / 3)
            receipts = list(self._deliveries)
            if not receipts:
                continue
            try:
                results = await self._transport.extend(receipts, lease)
            except TransportError as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            for receipt, renewed in zip(receipts, results, strict=True):
                delivery = self._deliveries.get(receipt)
                if not renewed and delivery is not None:
                    log.warning("lost the lease of %s", delivery)
                    delivery.mark_lease_lost()

    async def _shut_down(self, grace: float) -> None:
        if not self._tasks:
            return
        if not self._aborted and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Tasks cancelled before they started never removed themselves.
        self._tasks.clear()
