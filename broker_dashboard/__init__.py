"""``broker dashboard``: a live web dashboard of a store's topics, groups and dead letters.

Needs the ``dashboard`` extra (Starlette, Jinja2, uvicorn). See docs/operations.md,
"Dashboard", for what it shows and how to run it safely.
"""

from __future__ import annotations

from broker_dashboard.app import DashboardConfig, create_app
from broker_dashboard.security import WritePolicy
from broker_dashboard.serve import allowed_hosts, serve

__all__ = ["DashboardConfig", "WritePolicy", "allowed_hosts", "create_app", "serve"]
