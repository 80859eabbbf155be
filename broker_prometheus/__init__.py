"""Prometheus metrics of a broker, fed by its lifecycle hooks (the ``prometheus`` extra).

:class:`PrometheusMetrics` is the plugin; :func:`serving` serves its registry over HTTP,
as ``broker run --metrics-port`` does. Importing ``broker_core`` never imports this
package, nor ``prometheus_client``.
"""

from broker_prometheus.plugin import DEFAULT_REFRESH_INTERVAL, PrometheusMetrics
from broker_prometheus.queues import STATES, QueueGauges
from broker_prometheus.server import serving

__all__ = ["DEFAULT_REFRESH_INTERVAL", "STATES", "PrometheusMetrics", "QueueGauges", "serving"]
