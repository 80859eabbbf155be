"""A Flask app that publishes events through a SyncBroker, and the service that handles them.

pip install flask
export BROKER_URL=redis://localhost:6379/0
broker run examples.flask_publisher:consumer         # the billing service, from the repo root
flask --app examples.flask_publisher run             # the web app, in another terminal
curl -X POST localhost:5000/orders -H 'Content-Type: application/json' \
     -d '{"order_id": "A-1", "total": 9.5}'

Both processes need the same shared store: with the default ``memory://`` (a store inside
each process) the app still publishes, but its events reach no group of another process.
The app's views are plain functions, as under any WSGI server; ``publisher`` is shared by
all of its threads, and by every worker a pre-forking server (gunicorn) forks after
importing the app, each worker connecting anew on its first publish.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, ClassVar

from flask import Flask, request

from broker_core import Broker, Delivery, Event, SyncBroker

URL = os.environ.get("BROKER_URL", "memory://")


class OrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    total: float


publisher = SyncBroker.from_url(URL)
# Lets the publishes in progress finish when the process exits normally.
atexit.register(publisher.close)

app = Flask(__name__)


@app.post("/orders")
def place_order() -> tuple[dict[str, Any], int]:
    """Announce an order; answer with its event id and how many services it reached."""
    event = OrderPlaced.model_validate(request.get_json())
    reached = publisher.publish(event)
    return {"event_id": event.id, "groups": reached}, 202


consumer = Broker.from_url(URL, group="billing")


@consumer.on(OrderPlaced)
async def bill(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
    """The billing service's handler (``broker run`` subscribes its group to the topic)."""
    print(f"billing order {event.order_id}: {event.total:.2f} (attempt {delivery.attempt})")
