"""OpenTelemetry for the embedded event broker: traces across services, and metrics.

Install the ``otel`` extra and give the plugin to a broker::

    from broker_otel import OpenTelemetryPlugin

    broker = Broker.from_url(url, group="billing", plugins=[OpenTelemetryPlugin()])

docs/operations.md ("OpenTelemetry") lists the spans, attributes and instruments.
"""

from broker_otel.plugin import OpenTelemetryPlugin

__all__ = ["OpenTelemetryPlugin"]
